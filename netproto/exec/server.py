"""The exec service: its factory, which starts commands, counts them and ends them all.

:class:`ExecFactory` holds what every exec connection shares: the
:class:`~netproto.exec.policy.ExecPolicy`, the running commands (for the
``--exec-max-procs`` limits) and the server's shutdown. A command counts
against the limits until every process of its group is gone, not only until
its ``X``.

On shutdown (``twistd`` stopping, the reactor's ``before shutdown`` phase)
every command's group is sent ``SIGTERM``, then ``SIGKILL`` after the grace
period, and the shutdown waits until all of them have been reaped. The
factory also makes the server the child subreaper of its commands' orphans
(Linux), so that background children of a command are reaped by it, not left
as zombies of a PID 1 that may not reap.

A server that is killed runs none of that: each command is started inside
the :class:`~netproto.exec.confine.Confinement` (a pids cgroup, or a record of
its process group) and the factory keeps a
:class:`~netproto.exec.confine.Guardian` process running, which ends whatever
the server left once it is gone (see :mod:`netproto.exec.confine`).
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from netproto.codec import DEFAULT_MAX_FRAME
from netproto.errors import ErrorCode, ProtocolError
from netproto.exec import procs as _procs
from netproto.exec import spawn as _spawn
from netproto.exec.confine import Confinement, Guardian, instance
from netproto.exec.policy import ExecPolicy, Prepared
from netproto.exec.process import CommandProtocol
from netproto.exec.protocol import ClientReading, ExecProtocol
from netproto.exec.transport import CommandTransport
from netproto.framing import FramedFactory
from netproto.services import ServerContext, ServiceError

#: The most one read of a command's output pipe takes: one frame's payload
#: at the default ``max_frame``. Fewer, larger reads and frames are what make
#: a fast command's output cheap to stream.
READ_SIZE: Final = 256 * 1024

#: How an ``OSError`` from starting a command is reported to the client.
SPAWN_ERRORS: Final[dict[int, ErrorCode]] = {
    errno.ENOENT: "not-found",
    errno.ENOTDIR: "not-found",
    errno.EACCES: "not-allowed",
    errno.EPERM: "not-allowed",
    errno.EAGAIN: "busy",
    errno.ENOMEM: "busy",
    errno.EMFILE: "busy",
    errno.ENFILE: "busy",
}


class ExecFactory(FramedFactory):
    """Builds :class:`~netproto.exec.protocol.ExecProtocol` connections; see the module docstring.

    :param policy: what may run; by default from ``context.options``.
    :param subreaper: make this process the subreaper of the commands' orphans.
    :param guard: confine commands and keep a guardian (see the module docstring).
    """

    protocol = ExecProtocol
    log = Logger()
    #: Seconds between looks for exited processes that had left their command's
    #: group (see :func:`netproto.exec.procs.reapOrphans`), and for the cgroups
    #: of ended commands that have emptied since.
    strayReapInterval: float = 10.0

    def __init__(
        self,
        context: ServerContext,
        policy: ExecPolicy | None = None,
        maxFrame: int = DEFAULT_MAX_FRAME,
        subreaper: bool = True,
        guard: bool = True,
    ) -> None:
        super().__init__(context, maxFrame)
        self.policy = policy if policy is not None else ExecPolicy.fromOptions(context.options)
        self.readSize = min(READ_SIZE, maxFrame - 1)
        #: PROTOCOL.md section 5, unless ``--exec-no-pty``.
        self.features = ("pty",) if self.policy.pty else ()
        self.subreaper = subreaper
        self.guard = guard
        self.confinement = Confinement(None, None, None)
        self.guardian: Guardian | None = None
        #: Every command whose group is not yet gone, by pid.
        self.commands: dict[int, CommandTransport] = {}
        #: Every open connection (to close them gracefully on shutdown).
        self.connections: set[ExecProtocol] = set()
        self.perUser: Counter[str] = Counter()
        #: Ended commands by (code, signal, timed_out) of their X frame (None: not
        #: reported), for --metrics; a few hundred keys at most.
        self.exits: Counter[tuple[Any, ...] | None] = Counter()
        self.closing = False
        self._devnull: int | None = None
        self._trigger: Any = None
        self._strayReaper: LoopingCall | None = None
        self._triggerFired = False

    # -- factory life --------------------------------------------------------------

    def startFactory(self) -> None:
        self.closing = False
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if self.guard and self.guardian is None:
            self._confine(self._devnull)
        subreaping = self.subreaper and _spawn.becomeSubreaper()
        if subreaping:
            self.log.debug("exec: this server reaps its commands' orphaned children")
        if (subreaping or self.confinement.cgroups is not None) and self._strayReaper is None:
            self._strayReaper = LoopingCall(self._reapStrays)
            self._strayReaper.clock = self.context.reactor
            self._strayReaper.start(self.strayReapInterval, now=False)

    def _confine(self, devnull: int) -> None:
        """Set up where commands are kept, and the guardian that ends them with the server."""
        policy, dataDir = self.policy, self.context.dataDir
        self.confinement = Confinement.create(
            dataDir, instance(), policy, self.context.reactor.seconds
        )
        arguments = self.confinement.guardianArguments(dataDir, policy.killGrace)
        self.guardian = Guardian(self.context.reactor, arguments, devnull)
        started = self.guardian.start()
        self.log.info(
            "exec: commands run in {how}; {guard}",
            how=self.confinement.describe(),
            guard=f"the guardian (pid {self.guardian.pid}) ends them if the server dies"
            if started
            else "no guardian",
        )

    def _letGo(self) -> None:
        """The factory has stopped and no command is left: nothing to keep or guard."""
        self.confinement.close()
        self.confinement = Confinement(None, None, None)
        if self.guardian is not None:
            self.guardian.stop()
            self.guardian = None

    def stopFactory(self) -> None:
        """No new commands; end the running ones (shutdown waits for them, see the module)."""
        self.closing = True
        self.endAll()
        if not self.commands:
            self._dropTrigger()
            self._letGo()
        if self._strayReaper is not None and self._strayReaper.running:
            self._strayReaper.stop()
        self._strayReaper = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None

    def _dropTrigger(self) -> None:
        """Unregister the shutdown trigger (the factory has stopped and nothing runs)."""
        if self._trigger is not None and not self._triggerFired:
            self.context.reactor.removeSystemEventTrigger(self._trigger)
        self._trigger = None

    def _reapStrays(self) -> None:
        """Reap processes that left a command's group, were orphaned to us and
        exited; take back the cgroups that have emptied."""
        self.confinement.sweep()
        if self.guardian is not None:
            self.guardian.check()
        if not self.subreaper:
            return
        # Not only this factory's commands and guardian: every one started in
        # this process (another factory's too) is reaped by its own Spawned.
        for pid in _procs.reapOrphans(_spawn.unreaped()):
            self.log.info("exec: reaped {pid}, a process that had left its command", pid=pid)

    def endAll(self) -> Deferred[None]:
        """End every command's process group; fires once all are gone and reaped."""
        running = list(self.commands.values())
        waits = [transport.whenGone() for transport in running]
        for transport in running:
            transport.terminate()
        d: Deferred[Any] = DeferredList(waits)
        return d.addCallback(lambda _: None)

    def _beforeShutdown(self) -> Deferred[None]:
        """While commands run, the reactor's shutdown waits for this: every
        command ended and reaped, then every connection closed once its last
        frames (the commands' X) are written, or aborted after the grace period."""
        self._triggerFired = True
        self._trigger = None
        self.closing = True
        if not self.commands:
            # The trigger stays registered between commands (adding and
            # removing it per command costs); with none running, it has
            # nothing to wait for.
            return succeed(None)
        if self.commands:
            self.log.info(
                "exec: shutting down: ending {count} command(s)", count=len(self.commands)
            )
        d = self.endAll()
        d.addCallback(lambda _: self._closeConnections())
        return d

    def _closeConnections(self) -> Deferred[None]:
        connections = list(self.connections)
        waits = [proto.whenClosed() for proto in connections]
        for proto in connections:
            if proto.transport is not None:
                proto.transport.loseConnection()
        reactor = self.context.reactor

        def abortTheRest() -> None:
            for proto in connections:
                abort = getattr(proto.transport, "abortConnection", None)
                if abort is not None:
                    abort()

        timer = reactor.callLater(self.policy.killGrace, abortTheRest)
        done: Deferred[Any] = DeferredList(waits)

        def closed(_: object) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(closed)

    # -- commands ----------------------------------------------------------------

    def startCommand(self, proto: ExecProtocol, prepared: Prepared, user: str) -> CommandProtocol:
        """Start ``prepared`` for ``proto``'s client; its ``K`` is sent before this returns.

        :raises ProtocolError: ``busy`` past the limits or while shutting
            down; ``not-found``/``not-allowed`` when the program cannot start.
        """
        policy = self.policy
        if self.closing or self._devnull is None:
            raise ProtocolError("busy", "the server is shutting down")
        if len(self.commands) >= policy.maxProcs:
            raise ProtocolError("busy", f"the server already runs {policy.maxProcs} commands")
        if self.perUser[user] >= policy.maxProcsPerUser:
            raise ProtocolError(
                "busy", f"{user} already runs {policy.maxProcsPerUser} commands on this server"
            )
        reactor = self.context.reactor
        bridge = CommandProtocol(proto, reactor, prepared.timeout, self.maxFrame - 1)
        devnull = self._devnull
        try:
            spawned, release = self.confinement.start(
                lambda: _spawn.spawn(
                    prepared.executable,
                    prepared.argv,
                    env=prepared.env,
                    cwd=prepared.cwd,
                    stdin=prepared.stdin,
                    devnull=devnull,
                    pidfd=False,
                    window=prepared.window,
                )
            )
        except OSError as e:
            code = SPAWN_ERRORS.get(e.errno or 0, "not-found")
            raise ProtocolError(
                code, f"cannot start {prepared.argv[0]}: {e.strerror or e}"
            ) from None
        transport = CommandTransport(reactor, spawned, bridge, self.readSize, policy.killGrace)
        self.commands[transport.pid] = transport
        self.perUser[user] += 1
        if self._trigger is None or self._triggerFired:
            self._triggerFired = False
            self._trigger = reactor.addSystemEventTrigger(
                "before", "shutdown", self._beforeShutdown
            )
        assert proto.transport is not None
        # A full stdin pipe pauses reading the client (the protocol registers
        # the command as its connection's producer: the other direction).
        if transport.stdinWriter is not None:
            proto.reading = ClientReading(proto, reactor)
            transport.stdinWriter.registerProducer(proto.reading, True)
        proto.startLog(self.log, user).started(transport.pid, prepared.describe())
        started = reactor.seconds()
        peer = proto.peer
        transport.reaper.onGone = lambda: self._commandGone(transport, user, peer, started, release)
        return bridge

    def _commandGone(
        self,
        transport: CommandTransport,
        user: str,
        peer: str,
        started: float,
        release: Callable[[], None],
    ) -> None:
        release()
        self.commands.pop(transport.pid, None)
        self.perUser[user] -= 1
        if self.perUser[user] <= 0:
            del self.perUser[user]
        proto = transport.proto
        fields = proto.exitFields if isinstance(proto, CommandProtocol) else None
        self.exits[None if fields is None else tuple(fields.values())] += 1
        # One line per command is logged when it starts (who ran what). Its end
        # is logged only when the server had to end (some of) it: a second line
        # per command would cost a tenth of a short command's round trip.
        if transport.terminating:
            self.log.info(
                "exec: command {pid} of {peer} ({user}) ended by the server: {how} "
                "after {seconds:.3f} s",
                pid=transport.pid,
                peer=peer,
                user=user,
                how=fields if fields is not None else "not reported",
                seconds=self.context.reactor.seconds() - started,
            )
        if self.closing and not self.commands:
            self._dropTrigger()
            self._letGo()


def makeFactory(context: ServerContext) -> ExecFactory:
    """The exec service's factory (named as ``builder`` in ``netproto/exec/plugin.py``)."""
    try:
        policy = ExecPolicy.fromOptions(context.options, runAs=context.runAs)
    except ValueError as e:
        raise ServiceError(str(e)) from None
    return ExecFactory(context, policy)
