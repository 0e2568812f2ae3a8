"""Chat state: nicks, rooms, membership and delivery, as plain objects without I/O.

A connected user is an :class:`IParticipant`: something that has a nick and a room
(both set only by :class:`ChatServer`) and accepts encoded lines. The
``LineReceiver`` in :mod:`netproto.chat.protocol` is one such participant; a test
double or another front end (a web page, a bridge) is another. Everything that
PROTOCOL.md section 1 says about who receives what is decided here, and the exact
line forms are built here, once per event: a message is encoded once and the same
``bytes`` object goes to every recipient (and into the room's history).

Peer mistakes (a taken nick, a bad room name, an unknown target) are raised as
:class:`ChatError`; :func:`netproto.chat.commands.interpret` is the one place that
turns them into ``! TEXT`` lines.
"""

from __future__ import annotations

import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator

from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface

from netproto.chat.confusables import skeleton

CRLF = b"\r\n"

#: The room every client starts in.
LOBBY = "lobby"

#: Nicks and room names are 1 to this many characters (PROTOCOL.md section 1).
MAX_NAME = 32

#: Prefix of a replayed message: history is sent as ``*** history: <nick> text``,
#: a notice, so no client or bot can take an old message for a new one.
HISTORY_PREFIX = b"*** history: "

#: ``/who`` and ``/rooms`` answers are split into lines of about this many characters,
#: so a room of thousands never produces one line no client can show.
LIST_LINE = 400

# ChatRoom._scheduled bits: a flush is pending for the next turn / after the notice delay.
_SOON = 1
_LATER = 2

# Removed from relayed text, by Unicode general category:
# - Cc, C0 and C1 controls and DEL (TAB kept): relayed to other people's terminals
#   they could move the cursor, change colours or retitle windows;
# - Cf, format characters: the BiDi embeddings, overrides, isolates and marks
#   (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) reorder what follows
#   them as displayed (a line that reads as something else, a forged nick), and the
#   invisible ones (U+200B, U+2060, U+FEFF, tags) hide text in plain sight;
# - Zl and Zp, U+2028 and U+2029: some clients break the line there, so one
#   message could show as a second, forged line.
_REMOVED = frozenset({"Cc", "Cf", "Zl", "Zp"})
# Kept: TAB, and the zero-width (non-)joiner, which Persian and Indic writing and
# emoji sequences need; they join or part the letters beside them, nothing more.
_KEPT = frozenset("\t\u200c\u200d")

# Letters (category Lo) that show as nothing: a name made of them is invisible.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


class ChatError(Exception):
    """A peer's mistake; the message becomes the text of a ``! TEXT`` line."""


class IParticipant(Interface):
    """A connected chat user, as the chat state sees it."""

    nick = Attribute("str: the current nick; set by ChatServer only")
    room = Attribute(
        "ChatRoom or None: the current room; set by ChatServer only; None before "
        "ChatServer.connect and after ChatServer.disconnect"
    )

    def deliver(lines: bytes) -> None:
        """Send one or more whole UTF-8 lines, each ending in CRLF.

        The same ``bytes`` object goes to every recipient due the same lines: never
        modify it, and never block; a participant that cannot keep up must drop
        itself (by closing) rather than slow anyone else.
        """

    def close() -> None:
        """End the session once what was delivered has been sent.

        Called after the participant has been removed from the chat.
        """


def encodeLine(text: str) -> bytes:
    """``text`` as one wire line: UTF-8 and CRLF."""
    return text.encode("utf-8", "replace") + CRLF


def notice(text: str) -> bytes:
    """A ``*** TEXT`` notice line."""
    return encodeLine("*** " + text)


def errorLine(text: str) -> bytes:
    """A ``! TEXT`` error line."""
    return encodeLine("! " + text)


def cleanText(text: str) -> str:
    """``text`` without control, format and line-separator characters (TAB and the
    zero-width joiners kept; see :data:`_REMOVED`) and surrounding whitespace."""
    if not text.isprintable():  # the common case is one C-speed check
        text = "".join(
            [
                c
                for c in text
                if c.isprintable() or c in _KEPT or unicodedata.category(c) not in _REMOVED
            ]
        )
    return text.strip()


def normalizeName(name: str) -> str | None:
    """``name`` in NFKC if it is a valid nick or room name, else None.

    1-32 characters, each a letter (any script), a decimal digit, ``_`` or ``-``,
    and none of the letters that show as nothing. NFKC first, so an accented letter
    typed as letter + combining mark counts as the letter it shows, and the
    compatibility forms of letters (fullwidth ``a`` U+FF41, the ligature ``fi`` U+FB01, ...)
    become the letters they stand for, shown as such.
    """
    name = unicodedata.normalize("NFKC", name)
    if not 1 <= len(name) <= MAX_NAME:
        return None
    for ch in name:
        if not (ch.isalpha() or ch.isdecimal() or ch in "_-") or ch in _INVISIBLE_LETTERS:
            return None
    return name


def nameKey(name: str) -> str:
    """The key under which a name is unique: names that differ only in case, or that
    look alike (Unicode TR39 confusables: Cyrillic ``a`` U+0430 for Latin ``a``, ``0`` for
    ``O``, ``rn`` for ``m``), have one key.

    The skeleton of the case fold, folded and skeletonised again: some prototypes
    are capitals (``0`` looks like ``O``), and case folding comes first so that
    ``BOB`` and ``bob`` stay one name. (So a capital ``I`` counts as ``i``, not as
    the ``l`` it may look like.)
    """
    return skeleton(skeleton(name.casefold()).casefold())


def listLines(head: str, items: Iterable[str]) -> Iterator[bytes]:
    """``*** HEAD: a, b, c`` notice lines; past :data:`LIST_LINE` characters the list
    goes on in ``*** ... d, e`` lines."""
    prefix, length = head + ": ", 0
    current: list[str] = []
    for item in items:
        if current and length + len(item) > LIST_LINE:
            yield notice(prefix + ", ".join(current))
            prefix, current, length = "... ", [], 0
        current.append(item)
        length += len(item) + 2
    yield notice(prefix + ", ".join(current) if current else head)


def checkedNick(participant: IParticipant, name: str) -> str:
    """``/nick NAME``'s NAME, normalised, if it is a valid nick other than the
    participant's own; else a :class:`ChatError` saying why."""
    new = normalizeName(name)
    if new is None:
        raise ChatError(
            f"invalid nick: {cleanText(name)[:64]} (1-{MAX_NAME} letters, digits, _ or -)"
        )
    if new == participant.nick:
        raise ChatError(f"you are already {new}")
    return new


def checkedRoom(participant: IParticipant, name: str) -> str:
    """``/join ROOM``'s ROOM (``#`` optional), normalised, if it is a valid room name
    other than the participant's room; else a :class:`ChatError` saying why."""
    bare = name[1:] if name.startswith("#") else name
    roomName = normalizeName(bare)
    if roomName is None:
        raise ChatError(
            f"invalid room name: {cleanText(name)[:64]} "
            f"(1-{MAX_NAME} letters, digits, _ or -, after an optional #)"
        )
    room = participant.room
    if room is not None and nameKey(room.name) == nameKey(roomName):
        raise ChatError(f"you are already in {room.label}")
    return roomName


class ChatRoom:
    """A room: its members in join order, its recent messages, and its outbox.

    :ivar name: the name as its creator wrote it (without ``#``).
    :ivar members: participants in join order (a dict used as an ordered set), so a
        broadcast reaches the oldest member first and the newest last.
    :ivar history: the last messages (encoded lines), or None when history is off.

    Without a clock every broadcast is delivered at once. With one (the server
    passes its reactor), broadcasts wait in an outbox and :meth:`flush` sends them
    together: each member gets ONE ``bytes`` object per flush, the same object for
    every member who is due the same lines. Twisted's transport then writes it
    without copying, however many lines and members there are; a burst of joins
    or messages costs one write per member, not one per line per member. Members
    who joined since the last flush, and senders (who never get their own messages
    back), get their own shorter join of the lines meant for them. Per member, the
    order of lines is the order of events: see :meth:`ChatServer.send`.

    When the outbox is flushed:

    - a message (``<NICK> TEXT``, ``* NICK TEXT``) is flushed on the reactor's next
      turn (``callLater(0)``);
    - room notices alone (joins, parts, quits, nick changes) wait up to
      ``noticeDelay`` seconds, or until a message or a direct line to a member due
      them flushes the outbox, whichever comes first. Nobody needs to know of a
      join within milliseconds, and notices come in bursts (a restart reconnects
      every client at once: N joins to N members). Above all a client that
      connects and speaks at once, the usual bot, costs the room ONE write per
      member for its join notice and its line instead of two: the delay lets the
      reactor wait for the line instead of sending the join notice alone
      (in a room of 5000 that halves the time the line takes to reach the newest
      member; docs/chat.md, "How it is built").
    """

    __slots__ = (
        "_busy",
        "_clock",
        "_newcomers",
        "_noticeDelay",
        "_outbox",
        "_scheduled",
        "history",
        "members",
        "name",
    )

    def __init__(
        self,
        name: str,
        historyLength: int,
        clock: IReactorTime | None = None,
        noticeDelay: float = 0.0,
    ) -> None:
        self.name = name
        self.members: dict[IParticipant, None] = {}
        self.history: deque[bytes] | None = deque(maxlen=historyLength) if historyLength else None
        self._busy = 0  # deliveries in progress, iterating over self.members
        self._clock = clock
        self._noticeDelay = noticeDelay
        #: _SOON and/or _LATER: the flush calls pending on the clock (at most one of each)
        self._scheduled = 0
        #: (line, the member it is not for) in broadcast order, until the flush.
        self._outbox: list[tuple[bytes, IParticipant | None]] = []
        #: members who joined while the outbox held lines -> how many were not for them
        self._newcomers: dict[IParticipant, int] = {}

    @property
    def label(self) -> str:
        """``#name``, as rooms are always shown."""
        return "#" + self.name

    def add(self, participant: IParticipant) -> None:
        if self._outbox:
            self._newcomers[participant] = len(self._outbox)
        self._writable()[participant] = None

    def remove(self, participant: IParticipant) -> None:
        """Take ``participant`` out; lines still in the outbox are not sent to it."""
        del self._writable()[participant]
        self._newcomers.pop(participant, None)

    def _writable(self) -> dict[IParticipant, None]:
        # Deliveries iterate over self.members itself, with no copy: copying a
        # 5000-member list for every join or part left the allocator fragmented
        # (about 1.5 KiB of RSS per member after a burst of joins). If a delivery
        # changes the membership (its deliver closed a participant at once), the
        # change goes to a copy, and the iteration in progress goes on undisturbed.
        if self._busy:
            self.members = dict(self.members)
        return self.members

    def broadcast(
        self, line: bytes, exclude: IParticipant | None = None, *, roomNotice: bool = False
    ) -> None:
        """``line`` to every member but ``exclude``, oldest member first.

        ``roomNotice``: a room notice, which may wait for a message (see the class).
        """
        clock = self._clock
        if clock is None:
            self._busy += 1
            try:
                for member in self.members:
                    if member is not exclude:
                        member.deliver(line)
            finally:
                self._busy -= 1
            return
        self._outbox.append((line, exclude))
        scheduled = self._scheduled
        if scheduled & _SOON:
            return  # everything goes on the next turn anyway
        if not roomNotice or not self._noticeDelay:
            self._scheduled = scheduled | _SOON
            clock.callLater(0, self._flushSoon)
        elif not scheduled & _LATER:
            self._scheduled = scheduled | _LATER
            clock.callLater(self._noticeDelay, self._flushLater)

    def _flushSoon(self) -> None:
        self._scheduled &= ~_SOON
        self.flush()

    def _flushLater(self) -> None:
        self._scheduled &= ~_LATER
        self.flush()

    def owes(self, participant: IParticipant) -> bool:
        """Whether the outbox holds a line for ``participant``.

        Exact, not "may": a newcomer's own join notice (excluded for it) is no
        reason to flush, so a burst of connections between two flushes still
        costs one write per member, not one per connection per member.
        """
        outbox = self._outbox
        for i in range(self._newcomers.get(participant, 0), len(outbox)):
            if outbox[i][1] is not participant:
                return True
        return False

    def flush(self) -> None:
        """Deliver the outbox now (called from the clock, or early when order needs it).

        A call still pending on the clock then finds the outbox empty, or flushes
        what came since, a little early: never later than promised.
        """
        outbox = self._outbox
        if not outbox:
            return
        newcomers = self._newcomers
        self._outbox, self._newcomers = [], {}
        full = outbox[0][0] if len(outbox) == 1 else b"".join([line for line, _ in outbox])
        # Members due something else than `full`: senders (never sent their own lines)
        # and newcomers (not sent what preceded their join). Everyone else takes the
        # first branch: one set lookup and one call per member.
        special = {sender for _, sender in outbox}
        if newcomers:
            special.update(newcomers)
        self._busy += 1
        try:
            for member in self.members:
                if member not in special:
                    member.deliver(full)
                else:
                    start = newcomers.get(member, 0)
                    own = b"".join([line for line, x in outbox[start:] if x is not member])
                    if own:
                        member.deliver(own)
        finally:
            self._busy -= 1

    def remember(self, line: bytes) -> None:
        if self.history is not None:
            self.history.append(line)


class ChatServer:
    """All rooms and nicks of one chat server; every rule of PROTOCOL.md section 1 about
    who receives which line.

    :param historyLength: messages per room replayed to a joiner (0: none).
    :param clock: the reactor (``callLater``), so rooms coalesce their broadcasts
        (see :class:`ChatRoom`); None delivers every line at once.
    :param noticeDelay: seconds a room notice may wait for company (see :class:`ChatRoom`).
    """

    def __init__(
        self,
        historyLength: int = 20,
        clock: IReactorTime | None = None,
        noticeDelay: float = 0.0,
    ) -> None:
        self.historyLength = historyLength
        self.clock = clock
        self.noticeDelay = noticeDelay
        #: nameKey(nick) -> participant: every connected participant.
        self.nicks: dict[str, IParticipant] = {}
        #: nameKey(room name) -> room; a room exists while it has members.
        self.rooms: dict[str, ChatRoom] = {}
        self._guests = 0

    # -- connecting and leaving ------------------------------------------------------

    def connect(self, participant: IParticipant) -> None:
        """Give ``participant`` a free guest nick, welcome it and put it in ``#lobby``."""
        nick = self._guestNick()
        participant.nick = nick
        self.nicks[nameKey(nick)] = participant
        room = self._enter(participant, LOBBY)
        room.broadcast(
            notice(f"{nick} has joined {room.label}"), exclude=participant, roomNotice=True
        )
        welcome = notice(
            f"Welcome to netproto chat. You are {nick} in {room.label}. /help for commands."
        )
        self.send(participant, welcome + self._history(room))

    def dismiss(self, participants: Iterable[IParticipant], reason: str, farewell: bytes) -> None:
        """Remove several participants at once (the idle sweep): each gets what its
        room owed it, then ``farewell``; its room hears ``*** NICK has quit (REASON)``;
        then it is closed.

        However many leave, each room is flushed once here and its quit notices go
        out together at its next flush: one write per remaining member. (A
        :meth:`quit` for each would flush the room twice per leaver: N² deliveries
        in one turn for N leaving a room of N.) A participant dismissed does not get
        the quit notices of the others dismissed with it.
        """
        flushed: set[ChatRoom] = set()
        for participant in participants:
            room = participant.room
            if room is None:
                continue
            if room not in flushed:
                flushed.add(room)
                room.flush()
            participant.deliver(farewell)
            self.disconnect(participant, reason)
            participant.close()

    def disconnect(self, participant: IParticipant, reason: str) -> None:
        """Remove ``participant`` and tell its room ``*** NICK has quit (REASON)``.

        Safe to call again (a quit followed by the connection closing).
        """
        room = participant.room
        if room is None:
            return
        self._leave(participant, room)
        del self.nicks[nameKey(participant.nick)]
        room.broadcast(
            notice(f"{participant.nick} has quit ({cleanText(reason) or 'quit'})"), roomNotice=True
        )

    def quit(self, participant: IParticipant, reason: str) -> None:
        """``/quit``: the others hear of it first, then the participant is closed."""
        room = participant.room
        if room is not None:
            room.flush()  # what the room owes the quitter, before it goes
        self.disconnect(participant, reason)
        if room is not None:
            room.flush()
        participant.close()

    def send(self, participant: IParticipant, line: bytes) -> None:
        """``line`` to ``participant`` alone (replies, errors, private messages).

        Any line its room still owes it goes first, so every participant sees events
        in the order they happened (a private message never overtakes the same
        sender's earlier room message).
        """
        room = participant.room
        if room is not None and room.owes(participant):
            room.flush()
        participant.deliver(line)

    # -- talking -------------------------------------------------------------------

    def say(self, participant: IParticipant, text: str) -> None:
        """``<NICK> TEXT`` to everyone else in the room, and into its history."""
        text = cleanText(text)
        room = participant.room
        if not text or room is None:
            return
        line = encodeLine(f"<{participant.nick}> {text}")
        room.remember(line)
        room.broadcast(line, exclude=participant)

    def act(self, participant: IParticipant, text: str) -> None:
        """``* NICK TEXT`` to everyone else in the room, and into its history."""
        text = cleanText(text)
        room = participant.room
        if room is None:
            return
        if not text:
            raise ChatError("usage: /me TEXT")
        line = encodeLine(f"* {participant.nick} {text}")
        room.remember(line)
        room.broadcast(line, exclude=participant)

    def tell(self, participant: IParticipant, nick: str, text: str) -> None:
        """``*NICK* TEXT`` to ``nick`` only, whatever room either is in."""
        text = cleanText(text)
        if not nick or not text:
            raise ChatError("usage: /msg NICK TEXT")
        target = self.nicks.get(nameKey(unicodedata.normalize("NFKC", nick)))
        if target is None:
            raise ChatError(f"no such nick: {cleanText(nick)}")
        self.send(target, encodeLine(f"*{participant.nick}* {text}"))

    # -- nicks and rooms -----------------------------------------------------------

    def rename(self, participant: IParticipant, name: str) -> None:
        """``/nick NAME``: the room, renamer included, sees ``*** OLD is now known as NEW``."""
        new = checkedNick(participant, name)
        old = participant.nick
        key, oldKey = nameKey(new), nameKey(old)
        holder = self.nicks.get(key)
        if holder is not None and holder is not participant:
            raise ChatError(f"nick taken: {new}")
        del self.nicks[oldKey]
        self.nicks[key] = participant
        participant.nick = new
        if participant.room is not None:
            participant.room.broadcast(notice(f"{old} is now known as {new}"), roomNotice=True)

    def join(self, participant: IParticipant, name: str) -> None:
        """``/join ROOM``: leave the current room (its members and the participant see
        ``has left``), enter ROOM (its members and the participant see ``has joined``),
        then get ROOM's history."""
        roomName = checkedRoom(participant, name)
        old = participant.room
        if old is None:
            return
        old.flush()  # what the old room owes the mover, before it goes
        self._leave(participant, old)
        left = notice(f"{participant.nick} has left {old.label}")
        old.broadcast(left, roomNotice=True)
        self.send(participant, left)
        room = self._enter(participant, roomName)
        joined = notice(f"{participant.nick} has joined {room.label}")
        room.broadcast(joined, exclude=participant, roomNotice=True)
        self.send(participant, joined + self._history(room))

    def who(self, participant: IParticipant) -> None:
        """``/who``: the nicks in the participant's room, in join order."""
        room = participant.room
        if room is None:
            return
        count = len(room.members)
        for line in listLines(f"{count} in {room.label}", (m.nick for m in room.members)):
            self.send(participant, line)

    def listRooms(self, participant: IParticipant) -> None:
        """``/rooms``: every room with its member count, by name."""
        rooms = sorted(self.rooms.values(), key=lambda r: r.name.casefold())
        head = f"{len(rooms)} room" + ("" if len(rooms) == 1 else "s")
        for line in listLines(head, (f"{r.label} ({len(r.members)})" for r in rooms)):
            self.send(participant, line)

    # -- helpers -----------------------------------------------------------------

    def _guestNick(self) -> str:
        while True:
            self._guests += 1
            nick = f"guest{self._guests}"
            if nameKey(nick) not in self.nicks:
                return nick

    def _enter(self, participant: IParticipant, name: str) -> ChatRoom:
        key = nameKey(name)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = ChatRoom(
                name, self.historyLength, self.clock, self.noticeDelay
            )
        room.add(participant)
        participant.room = room
        return room

    def _leave(self, participant: IParticipant, room: ChatRoom) -> None:
        room.remove(participant)
        participant.room = None
        if not room.members:
            del self.rooms[nameKey(room.name)]

    def _history(self, room: ChatRoom) -> bytes:
        """The room's history as replayed to a joiner: sent with its welcome or join
        notice as one write."""
        if not room.history:
            return b""
        return b"".join([HISTORY_PREFIX + line for line in room.history])
