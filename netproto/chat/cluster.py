"""One chat over several servers sharing a Redis (PROTOCOL.md section 8, ``--chat-redis``).

:class:`ClusterChatServer` is a :class:`~netproto.chat.state.ChatServer` whose
public methods (the one way in for every front end: telnet lines, browser
messages) keep the shared state in Redis (:mod:`netproto.chat.scripts`) and whose
rooms are fed from Redis pub/sub. What it promises:

- **One order per room, everywhere.** Every room event (a message, a join, a part,
  a quit, a nick change) is PUBLISHed once on the room's channel, by the script
  that made the change, and every server, the sender's own included, delivers
  it to its own members from that channel. So every member of a room, on any
  server, sees the room's events in the same order, which is the order Redis ran
  them; a sender's lines go out over one connection, so that is the order it sent
  them. Nothing is delivered twice: a server delivers only what its subscription
  brings, once per member. The cost is one PUBLISH per line per room, never one
  per member, and the line reaches a member of the sender's own server after one
  trip through Redis too.
- **A member's commands run one at a time, in order.** A command that needs
  Redis's answer (a nick claim, a join, ``/who``, ``/msg``) holds the member's later
  commands until it is done (at most :data:`MAX_QUEUED`; the flood limit keeps a
  member far below it). Messages need no answer and do not wait.
- **Joining is seamless.** A joiner's server subscribes to the room first; the
  join script then publishes the join on the room's channel and, right after it
  on the server's channel, the joiner's notice and the room's history ('h'): the
  joiner becomes a member at that point in the subscription's stream, so it
  misses nothing said after its join and gets nothing twice.
- **Presence.** Each server says it is alive every :data:`HEARTBEAT_INTERVAL` s
  for :data:`PRESENCE_TTL` s; a heartbeat reaps every server whose presence
  expired (its members quit ``(server lost)``, their nicks are free).
- **Link lost.** Each member hears ``*** cluster link lost``; the server goes on
  as a single server (its own members, its own rooms) and reconnects with
  backoff. When the link is back, it subscribes again, registers every member as
  it now is (a nick taken meanwhile elsewhere becomes a fresh guest nick, said
  to its room), and each member hears ``*** cluster link restored``.

The KIND byte of a channel message (see :mod:`netproto.chat.scripts`):

====  ======================================================================
m     a message from member M: to everyone in the room but M
j     M joined: to everyone in the room but M
p     M left: to everyone in the room, M included; M then leaves the room here
n     a notice (quit, nick change): to everyone in the room
h     (server channel) M's join notice and history: M enters its new room
t     (server channel) a private message for M
====  ======================================================================
"""

from __future__ import annotations

import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.chat.redislink import ILinkListener, LinkDown
from netproto.chat.scripts import PREFIX
from netproto.chat.state import (
    HISTORY_PREFIX,
    LOBBY,
    ChatError,
    ChatRoom,
    ChatServer,
    IParticipant,
    checkedNick,
    checkedRoom,
    cleanText,
    encodeLine,
    errorLine,
    listLines,
    nameKey,
    notice,
)

#: Seconds between two heartbeats of a server (its presence, and the reaping of
#: servers whose presence expired).
HEARTBEAT_INTERVAL = 2.0

#: Seconds a server's presence lasts without a heartbeat. A killed server's members
#: quit at most PRESENCE_TTL + HEARTBEAT_INTERVAL seconds after its last heartbeat
#: (10 s: inside the 15 s PROTOCOL.md section 8 promises); a server whose reactor is
#: blocked longer than this is taken for dead, and registers its members again.
PRESENCE_TTL = 8.0

#: Seconds a heartbeat may wait for its reply before the link is taken as dead
#: (a Redis host that vanished without closing the connection).
REPLY_TIMEOUT = 5.0

#: Seconds after starting within which a server expects to have joined the cluster;
#: past them its members are told ``*** cluster link lost`` (a Redis unreachable
#: from the start is the same fault as one lost later) and hear ``restored`` once
#: it is up. Long enough for a slow first connection, short for a person waiting.
STARTUP_GRACE = 5.0

#: Commands a member may have waiting behind one that waits for Redis. Flood
#: control (40 lines at once) keeps an honest client far below; past it a line
#: is answered ``! slow down`` and dropped, so one member cannot fill memory.
MAX_QUEUED = 64

LINK_LOST = notice("cluster link lost")
LINK_RESTORED = notice("cluster link restored")
_SLOW = errorLine("slow down")

Op = Callable[[], Coroutine[Any, Any, None] | None]


def _key(name: str) -> bytes:
    return (PREFIX + name).encode()


@implementer(ILinkListener)
class ClusterChatServer(ChatServer):
    """A chat server that is one of several sharing a Redis (see the module).

    :param link: a :class:`~netproto.chat.redislink.RedisLink` (or a fake with its
        methods); this server becomes its listener. Start the link after this.
    :param clock: the reactor: rooms' flushes, heartbeats.
    :param serverId: this server's id in Redis (default: random, new per process).
    """

    log = Logger()

    def __init__(
        self,
        link: Any,
        historyLength: int,
        clock: IReactorTime,
        noticeDelay: float = 0.0,
        serverId: str | None = None,
    ) -> None:
        super().__init__(historyLength, clock, noticeDelay)
        self.reactor = clock
        self.link = link
        link.listener = self
        self.serverId = serverId or uuid.uuid4().hex[:12]
        self.linked = False
        self._lost = False  # members were told the link is lost
        self._count = 0
        #: member id -> participant, and back: every member of this server.
        self.members: dict[str, IParticipant] = {}
        self._ids: dict[IParticipant, str] = {}
        #: members with a command waiting for Redis -> their later commands.
        self._queues: dict[IParticipant, deque[Op]] = {}
        #: members between rooms -> the room they are entering, and what waits for it.
        self._joining: dict[IParticipant, tuple[str, Deferred[None]]] = {}
        #: room key -> None once Redis confirmed the subscription; until then, who waits.
        self._subscribed: dict[str, list[Deferred[None]] | None] = {}
        #: where a member is while it has no room (connecting, between rooms):
        #: lines it sends still count (they wait in its queue), nothing reaches it.
        self._limbo = ChatRoom(LOBBY, 0)
        self._linkedSince = 0.0
        self._beats: LoopingCall | None = None
        self._channel = _key("s:" + self.serverId)
        self._startup: IDelayedCall | None = clock.callLater(STARTUP_GRACE, self._notYet)

    # -- the public methods, each a command of a member ------------------------------

    def connect(self, participant: IParticipant) -> None:
        self._count += 1
        memberId = f"{self.serverId}:{self._count}"
        self.members[memberId] = participant
        self._ids[participant] = memberId
        if not self.linked:
            super().connect(participant)
            if self._lost:
                participant.deliver(LINK_LOST)
            return
        participant.nick = f"({memberId})"  # for the log, until its guest nick is claimed
        participant.room = self._limbo
        self._run(participant, lambda: self._connect(participant))

    def disconnect(self, participant: IParticipant, reason: str) -> None:
        memberId = self._ids.pop(participant, None)
        if memberId is None:
            return
        del self.members[memberId]
        self._queues.pop(participant, None)
        joining = self._joining.pop(participant, None)
        if joining is not None and not joining[1].called:
            joining[1].callback(None)  # the command waiting for it ends (see _expect)
        if not self.linked:
            super().disconnect(participant, reason)
            return
        room = participant.room
        if room is not None and room is not self._limbo:
            self._leave(participant, room)
        participant.room = None
        self._forget(participant)
        self._fire("leave", self.serverId, memberId, cleanText(reason) or "quit")

    def quit(self, participant: IParticipant, reason: str) -> None:
        self._run(participant, lambda: super(ClusterChatServer, self).quit(participant, reason))

    def say(self, participant: IParticipant, text: str) -> None:
        self._run(participant, lambda: self._talk(participant, text, "<{}> {}"))

    def act(self, participant: IParticipant, text: str) -> None:
        self._run(participant, lambda: self._talk(participant, text, "* {} {}"))

    def tell(self, participant: IParticipant, nick: str, text: str) -> None:
        self._run(participant, lambda: self._tell(participant, nick, text))

    def rename(self, participant: IParticipant, name: str) -> None:
        self._run(participant, lambda: self._rename(participant, name))

    def join(self, participant: IParticipant, name: str) -> None:
        self._run(participant, lambda: self._join(participant, name))

    def who(self, participant: IParticipant) -> None:
        self._run(participant, lambda: self._who(participant))

    def listRooms(self, participant: IParticipant) -> None:
        self._run(participant, lambda: self._rooms(participant))

    # -- running a member's commands in order ------------------------------------------

    def _run(self, participant: IParticipant, op: Op) -> None:
        """Run ``op`` now, or after the member's command that waits for Redis."""
        queue = self._queues.get(participant)
        if queue is None:
            self._start(participant, op)
        elif len(queue) < MAX_QUEUED:
            queue.append(op)
        else:
            participant.deliver(_SLOW)

    def _start(self, participant: IParticipant, op: Op) -> None:
        pending = self._call(participant, op)
        if pending is not None:
            self._queues[participant] = deque()
            ensureDeferred(self._guard(participant, pending)).addBoth(self._next, participant)

    def _call(self, participant: IParticipant, op: Op) -> Coroutine[Any, Any, None] | None:
        try:
            return op()
        except ChatError as e:
            self.send(participant, errorLine(str(e)))
            return None

    async def _guard(self, participant: IParticipant, pending: Coroutine[Any, Any, None]) -> None:
        try:
            await pending
        except ChatError as e:
            if participant in self._ids:
                self.send(participant, errorLine(str(e)))
        except LinkDown:
            pass  # the member goes on alone with this server; see linkDown

    def _next(self, result: object, participant: IParticipant) -> None:
        """The member's command that waited is done: run what waits behind it."""
        if isinstance(result, Failure):
            self.log.failure("cluster: a member's command failed", result)
        queue = self._queues.get(participant)
        while queue:
            pending = self._call(participant, queue.popleft())
            if pending is not None:
                ensureDeferred(self._guard(participant, pending)).addBoth(self._next, participant)
                return
        self._queues.pop(participant, None)

    # -- the commands, over Redis (or alone while the link is down) --------------------

    async def _connect(self, participant: IParticipant) -> None:
        """A new member: a guest nick no one in the cluster has, then #lobby."""
        memberId = self._ids[participant]
        try:
            roomKey = await self._subscribe(nameKey(LOBBY))
            while participant in self._ids:
                nick = f"guest{await self.link.execute('INCR', _key('guests'))}"
                if participant not in self._ids:
                    return
                arrived = self._expect(participant, roomKey)
                claimed = await self._script(
                    "claim", self.serverId, memberId, nameKey(nick), nick, roomKey, LOBBY, "w",
                    HISTORY_PREFIX,
                )  # fmt: skip
                if not claimed:
                    self._joining.pop(participant, None)
                    continue
                if participant in self._ids:
                    self._renamed(participant, nick)
                await arrived
                return
        except LinkDown:
            self._settle(participant)
            if participant in self._ids and participant.room is self._limbo:
                self._forget(participant)
                participant.room = None
                ChatServer.connect(self, participant)

    def _talk(self, participant: IParticipant, text: str, form: str) -> None:
        if not self.linked:
            if form.startswith("<"):
                ChatServer.say(self, participant, text)
            else:
                ChatServer.act(self, participant, text)
            return
        text = cleanText(text)
        room = participant.room
        if room is None or room is self._limbo:
            return
        if not text:
            if form.startswith("<"):
                return
            raise ChatError("usage: /me TEXT")
        line = encodeLine(form.format(participant.nick, text))
        self._fire("say", nameKey(room.name), self._ids[participant], line, str(self.historyLength))

    async def _tell(self, participant: IParticipant, nick: str, text: str) -> None:
        if not self.linked:
            ChatServer.tell(self, participant, nick, text)
            return
        text = cleanText(text)
        if not nick or not text:
            raise ChatError("usage: /msg NICK TEXT")
        key = nameKey(unicodedata.normalize("NFKC", nick))
        line = encodeLine(f"*{participant.nick}* {text}")
        try:
            found = await self._script("tell", key, line)
        except LinkDown:
            ChatServer.tell(self, participant, nick, text)
            return
        if not found:
            raise ChatError(f"no such nick: {cleanText(nick)}")

    async def _rename(self, participant: IParticipant, name: str) -> None:
        if not self.linked:
            ChatServer.rename(self, participant, name)
            return
        new = checkedNick(participant, name)
        memberId = self._ids[participant]
        try:
            done = await self._script("rename", self.serverId, memberId, nameKey(new), new)
        except LinkDown:
            if participant in self._ids:
                ChatServer.rename(self, participant, name)
            return
        if done == 0:
            raise ChatError(f"nick taken: {new}")
        if done < 0:  # not registered yet: the link came back a moment ago
            raise ChatError("the cluster is busy; try again")
        if participant in self._ids:
            self._renamed(participant, new)

    async def _join(self, participant: IParticipant, name: str) -> None:
        if not self.linked:
            ChatServer.join(self, participant, name)
            return
        roomName = checkedRoom(participant, name)
        if participant.room is None or participant.room is self._limbo:
            return
        memberId = self._ids[participant]
        try:
            roomKey = await self._subscribe(nameKey(roomName))
            if participant not in self._ids:
                return
            arrived = self._expect(participant, roomKey)
            joined = await self._script(
                "join", self.serverId, memberId, roomKey, roomName, HISTORY_PREFIX
            )
            if not joined:  # not registered (taken for dead a moment ago): it will be
                self._settle(participant)
                raise ChatError("the cluster is busy; try again")
            await arrived
        except LinkDown:
            self._settle(participant)
            if participant not in self._ids:
                return
            if participant.room is self._limbo:  # it left its room already
                participant.room = None
                room = self._enter(participant, roomName)
                joined = notice(f"{participant.nick} has joined {room.label}")
                room.broadcast(joined, exclude=participant, roomNotice=True)
                self.send(participant, joined + self._history(room))
            else:
                ChatServer.join(self, participant, name)

    async def _who(self, participant: IParticipant) -> None:
        room = participant.room
        if not self.linked or room is None or room is self._limbo:
            ChatServer.who(self, participant)
            return
        try:
            nicks = await self.link.execute("ZRANGE", _key("room:" + nameKey(room.name)), 0, -1)
        except LinkDown:
            ChatServer.who(self, participant)
            return
        names = [n.decode("utf-8", "replace") for n in nicks]
        for line in listLines(f"{len(names)} in {room.label}", names):
            self.send(participant, line)

    async def _rooms(self, participant: IParticipant) -> None:
        if not self.linked:
            ChatServer.listRooms(self, participant)
            return
        try:
            flat = await self._script("rooms")
        except LinkDown:
            ChatServer.listRooms(self, participant)
            return
        rooms = sorted(
            ((flat[i].decode("utf-8", "replace"), flat[i + 1]) for i in range(0, len(flat), 2)),
            key=lambda r: r[0].casefold(),
        )
        head = f"{len(rooms)} room" + ("" if len(rooms) == 1 else "s")
        for line in listLines(head, (f"#{name} ({count})" for name, count in rooms)):
            self.send(participant, line)

    # -- what Redis says -------------------------------------------------------------

    def message(self, channel: bytes, payload: bytes) -> None:
        """A message on a room's channel or on this server's (see the module)."""
        head, _, body = payload.partition(b" ")
        kind, lines = body[:1], body[1:]
        participant = self.members.get(head.decode("ascii", "replace"))
        if channel == self._channel:
            if participant is None:
                return
            if kind == b"h":
                self._arrive(participant, lines)
            elif kind == b"t":
                self.send(participant, lines)
            return
        room = self.rooms.get(channel[len(PREFIX) + 2 :].decode("utf-8", "replace"))
        if room is None:
            return
        if kind == b"m":
            room.remember(lines)
            room.broadcast(lines, exclude=participant)
        elif kind == b"p" and participant is not None and participant.room is room:
            room.flush()  # what the room owes the leaver, before it goes
            self._leave(participant, room)
            participant.room = self._limbo
            if room.members:
                room.broadcast(lines, roomNotice=True)
            self.send(participant, lines)
        else:
            room.broadcast(lines, exclude=participant if kind == b"j" else None, roomNotice=True)

    def _expect(self, participant: IParticipant, roomKey: str) -> Deferred[None]:
        """What fires once ``participant`` has entered the room ``roomKey`` ('h')."""
        arrived: Deferred[None] = Deferred()
        self._joining[participant] = (roomKey, arrived)
        return arrived

    def _settle(self, participant: IParticipant) -> None:
        """``participant`` no longer waits to enter a room (the link went)."""
        joining = self._joining.pop(participant, None)
        if joining is not None:
            joining[1].addErrback(lambda _: None)  # its LinkDown is handled by the caller

    def _arrive(self, participant: IParticipant, text: bytes) -> None:
        joining = self._joining.pop(participant, None)
        if joining is None:
            return
        name, _, lines = text.partition(b"\n")
        participant.room = None
        self._enter(participant, name.decode("utf-8", "replace"))
        self.send(participant, lines)
        joining[1].callback(None)

    def _forget(self, participant: IParticipant) -> None:
        """Take ``participant``'s nick out of this server's index."""
        key = nameKey(participant.nick)
        if self.nicks.get(key) is participant:
            del self.nicks[key]

    def _renamed(self, participant: IParticipant, new: str) -> None:
        self._forget(participant)
        self.nicks[nameKey(new)] = participant
        participant.nick = new

    # -- the link --------------------------------------------------------------------

    def linkUp(self) -> None:
        ensureDeferred(self._rejoin()).addErrback(self._rejoinFailed)

    async def _rejoin(self) -> None:
        """Subscribe again, say this server is alive, register every member as it now is."""
        await self.link.subscribe(self._channel)
        for roomKey in list(self.rooms):
            await self._subscribe(roomKey)
        await self._beat()
        self.linked = True
        if self._startup is not None and self._startup.active():
            self._startup.cancel()
        self._startup = None
        self._linkedSince = self.reactor.seconds()
        self._beats = LoopingCall(self._tick)
        self._beats.clock = self.reactor
        self._beats.start(HEARTBEAT_INTERVAL, now=False)
        self._registerAll()
        self.log.info(
            "cluster: joined as server {serverId} with {count} members",
            serverId=self.serverId,
            count=len(self.members),
        )
        if self._lost:
            self._lost = False
            for participant in list(self.members.values()):
                self.send(participant, LINK_RESTORED)

    def _notYet(self) -> None:
        """Not in the cluster :data:`STARTUP_GRACE` s after starting: say so."""
        self._startup = None
        if not self.linked:
            self.log.warn("cluster: no link to Redis yet; serving this server's members alone")
            self._announceLost()

    def _announceLost(self) -> None:
        if not self._lost:
            self._lost = True
            for participant in list(self.members.values()):
                self.send(participant, LINK_LOST)

    def _rejoinFailed(self, failure: Failure) -> None:
        if not failure.check(LinkDown):  # a reply that never came, say
            self.log.warn("cluster: joining failed ({why}); reconnecting", why=failure.value)
            self.link.reset()

    def _registerAll(self) -> None:
        for participant in list(self.members.values()):
            self._run(participant, partial(self._register, participant))

    async def _register(self, participant: IParticipant) -> None:
        """Put ``participant`` in Redis as it is here; a nick now taken elsewhere
        becomes a fresh guest nick, and its room hears it."""
        room = participant.room
        if room is None or room is self._limbo:
            return
        memberId, roomKey = self._ids[participant], nameKey(room.name)
        await self._subscribe(roomKey)  # a room made here while the link was down
        nick = participant.nick
        while participant in self._ids:
            claimed = await self._script(
                "claim", self.serverId, memberId, nameKey(nick), nick, roomKey, room.name, "r",
                HISTORY_PREFIX,
            )  # fmt: skip
            if claimed:
                break
            nick = f"guest{await self.link.execute('INCR', _key('guests'))}"
        if nick != participant.nick and participant in self._ids:
            old = participant.nick
            self._renamed(participant, nick)
            room.broadcast(notice(f"{old} is now known as {nick}"), roomNotice=True)

    def linkDown(self) -> None:
        self.linked = False
        if self._beats is not None and self._beats.running:
            self._beats.stop()
        self._beats = None
        self._subscribed.clear()
        for _, arrived in list(self._joining.values()):
            if not arrived.called:
                arrived.errback(LinkDown())
        self._announceLost()

    def _tick(self) -> None:
        ensureDeferred(self._beat()).addErrback(self._beatFailed)
        wanted = {key for key, _ in self._joining.values()}
        for roomKey in [k for k, d in self._subscribed.items() if d is None]:
            if roomKey not in self.rooms and roomKey not in wanted:
                del self._subscribed[roomKey]
                self.link.unsubscribe(_key("r:" + roomKey))

    async def _beat(self) -> None:
        mayReap = self.linked and self.reactor.seconds() - self._linkedSince >= PRESENCE_TTL
        d = self._script(
            "heartbeat", self.serverId, str(int(PRESENCE_TTL * 1000)), "1" if mayReap else "0"
        )
        added, _ = await d.addTimeout(REPLY_TIMEOUT, self.reactor)
        if added and self.linked:
            self._registerAll()  # taken for dead (a long pause): register again

    def _beatFailed(self, failure: Failure) -> None:
        if not failure.check(LinkDown):
            self.log.warn(
                "cluster: heartbeat failed ({why}); reconnecting", why=failure.getErrorMessage()
            )
            self.link.reset()

    def stop(self) -> Deferred[Any]:
        """Leave the cluster (server shutdown): this server's members quit now, not
        once its presence expires."""
        if self._startup is not None and self._startup.active():
            self._startup.cancel()
        if self._beats is not None and self._beats.running:
            self._beats.stop()
        if not self.linked:
            stopped: Deferred[Any] = self.link.stop()
            return stopped
        d = self._script("goodbye", self.serverId, "server shutting down")
        d.addErrback(lambda _: None)
        return d.addBoth(lambda _: self.link.stop())

    # -- helpers -----------------------------------------------------------------------

    async def _subscribe(self, roomKey: str) -> str:
        """Subscribe to the room's channel (once per room), and wait until Redis has
        confirmed it; returns ``roomKey``."""
        if roomKey in self._subscribed:
            waiters = self._subscribed[roomKey]
            if waiters is not None:
                waiting: Deferred[None] = Deferred()
                waiters.append(waiting)
                await waiting
            return roomKey
        waiters = self._subscribed[roomKey] = []
        try:
            await self.link.subscribe(_key("r:" + roomKey))
        except LinkDown:
            if self._subscribed.get(roomKey) is waiters:
                del self._subscribed[roomKey]
            for waiting in waiters:
                waiting.errback(LinkDown())
            raise
        if self._subscribed.get(roomKey) is waiters:
            self._subscribed[roomKey] = None
        for waiting in waiters:
            waiting.callback(None)
        return roomKey

    def _script(self, name: str, *args: Any) -> Deferred[Any]:
        return self.link.script(name, (), (PREFIX, *args))  # type: ignore[no-any-return]

    def _fire(self, name: str, *args: Any) -> None:
        """A script whose answer nobody waits for (a message, a quit)."""
        self._script(name, *args).addErrback(self._fireFailed, name)

    def _fireFailed(self, failure: Failure, name: str) -> None:
        if not failure.check(LinkDown):
            self.log.warn("cluster: {name} failed: {why}", name=name, why=failure.getErrorMessage())
