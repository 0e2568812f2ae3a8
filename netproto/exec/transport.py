"""The process transport of one command: its pipes on the reactor, its exit, its group's end.

:class:`CommandTransport` is to a command started by
:func:`netproto.exec.spawn.spawn` what Twisted's ``Process`` is to
``reactor.spawnProcess``: an :class:`~twisted.internet.interfaces.IProcessTransport`
that drives a :class:`~twisted.internet.protocol.ProcessProtocol` with the same
calls in the same order (``childDataReceived``, ``childConnectionLost``,
``processExited``, then ``processEnded`` once the process has exited *and*
both output pipes are closed). What it does differently, and why:

* each read takes up to ``readSize`` bytes (a whole frame, 256 KiB by
  default) instead of Twisted's 8 KiB, so output costs one read and one frame
  per chunk;
* signals go to the command's process group, not only to its first process,
  and never to an empty group once the first process is reaped (the group id
  may be another's then: :class:`~twisted.internet.error.ProcessExitedAlready`);
* ending the group (``SIGTERM``, ``SIGKILL`` after ``killGrace`` seconds, the
  sweep of what is left once the command has ended) is its
  :class:`~netproto.exec.reaper.GroupReaper`'s; ``whenGone`` fires when
  nothing of the group remains.

Pausing (:meth:`CommandTransport.pauseProducing`) stops reading both output
pipes; the command then blocks once its pipe is full: backpressure.

A command on a terminal (PROTOCOL.md section 5) is driven the same way: its
one output is the terminal's master end (read by a :class:`PipeReader`, paused
the same way), its keys go to a second descriptor of it (a
:class:`TerminalWriter`); what differs is said where it differs: ``C`` writes
the end-of-file character, signals go to the terminal's foreground group,
``W`` resizes it, and the reaper ends the command's whole session (each job
of an interactive shell is a group of its own) with a hang-up first.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

from twisted.internet import fdesc, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProcessTransport,
    IPushProducer,
    IReadDescriptor,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.exec import procs as _procs
from netproto.exec import pty as _pty
from netproto.exec import spawn as _spawn
from netproto.exec.reaper import HANGUP, GroupReaper
from netproto.exec.spawn import Spawned

#: Without pidfds, how often the leader is polled for its exit.
EXIT_POLL: Final = 0.01
#: The same for a command on a terminal, whose exit is watched from its start
#: (a session may last hours): a keystroke's pace, not a tight loop.
TERMINAL_EXIT_POLL: Final = 0.1


@implementer(IReadDescriptor)
class PipeReader:
    """The parent's end of a command's stdout or stderr, read ``readSize`` bytes at a time.

    A bare ``IReadDescriptor``, not a ``FileDescriptor``: it never writes,
    and its end of file is handled in :meth:`doRead` (no ``Failure`` made,
    no write machinery torn down), which matters for short commands.

    The pipe starts at the kernel's default size; the first read that finds
    it full (:data:`~netproto.exec.spawn.DEFAULT_PIPE_SIZE` bytes or more)
    enlarges it to :data:`~netproto.exec.spawn.PIPE_SIZE`, so only commands
    that write fast pay for the ``fcntl`` and the larger pipe. Reads ask for
    ``readSize`` bytes only from then on, and for at most the default pipe's
    size before, which drains it whole all the same: ``os.read`` allocates
    what it asks for, and 256 KiB is above glibc's first ``mmap`` threshold,
    where each read of a keystroke's echo (a terminal's reads never fill it)
    could cost an ``mmap``, an ``mremap`` and a ``munmap``.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        readSize: int,
        received: Callable[[bytes], None],
        closed: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.readSize = readSize
        self._received = received
        self._closed = closed
        self.reading = False
        self.grown = False
        #: What the next read asks for: at most the default pipe's size until it is grown.
        self._size = min(readSize, _spawn.DEFAULT_PIPE_SIZE)

    def fileno(self) -> int:
        return self.fd

    def startReading(self) -> None:
        if self.fd >= 0 and not self.reading:
            self.reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, self._size)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if not self.grown and len(data) >= _spawn.DEFAULT_PIPE_SIZE:
            self.grown = True
            self._size = self.readSize
            _spawn.setPipeSize(self.fd, _spawn.PIPE_SIZE)
        self._received(data)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the pipe hang up (its write end closed, nothing left to read)."""
        self.close()

    def close(self) -> None:
        """Stop reading and close (end of file, or the output is unwanted)."""
        if self.fd < 0:
            return
        self.stopReading()
        os.close(self.fd)
        self.fd = -1
        self._closed()

    def logPrefix(self) -> str:
        return "exec-pipe"


class PipeWriter(FileDescriptor):
    """The parent's end of a command's stdin; buffered, a consumer for the client's connection.

    A producer registered with :meth:`registerProducer` (the client's TCP
    transport) is paused while more than :attr:`bufferSize` bytes wait for
    the command to read them: the client is then not read, and TCP tells it
    to slow down. When the command closes its stdin the producer is resumed
    and let go, never stopped: the connection outlives the command.

    While nothing waits to be written, :meth:`write` writes at once (what the
    pipe does not take is buffered, and every write after it too, until the
    buffer has drained): a keystroke's trip then costs no reactor turn, and no
    ``epoll_ctl`` to start and stop watching the descriptor. Whether anything
    waits is known from ``startWriting`` and ``stopWriting``: ``FileDescriptor``
    watches for writability exactly while it holds data.
    """

    #: Whether the descriptor is watched for its reader having closed it: a
    #: pipe's write end only "reads" as an error then.
    watchHangup = True
    #: Whether the reactor is watching for writability: something is buffered.
    _waiting = False

    def __init__(self, reactor: Any, fd: int, lost: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.fd = fd
        self._lost = lost
        self.connected = 1
        if self.watchHangup:
            self.startReading()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        return main.CONNECTION_LOST

    def writeSomeData(self, data: bytes) -> int | BaseException:
        written: int | BaseException = fdesc.writeToFD(self.fd, data)
        return written

    def startWriting(self) -> None:
        self._waiting = True
        super().startWriting()

    def stopWriting(self) -> None:
        self._waiting = False
        super().stopWriting()

    def write(self, data: bytes) -> None:
        """Write ``data`` now if nothing waits before it; buffer what is left."""
        if data and not self._waiting and self.connected and not self.disconnecting:
            try:
                written = os.write(self.fd, data)
            except OSError:
                written = 0  # full (EAGAIN), or broken: the buffered write says so
            if written == len(data):
                return
            data = data[written:]
        super().write(data)

    def _releaseProducer(self) -> None:
        producer, paused = self.producer, self.producerPaused
        if producer is not None:
            self.unregisterProducer()
            if paused:
                IPushProducer(producer).resumeProducing()

    def finish(self) -> None:
        """Close once what is buffered is written (end of input).

        The producer is let go first: ``FileDescriptor`` does not close while
        a paused streaming producer is registered, and no more input comes.
        """
        self._releaseProducer()
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        self._releaseProducer()
        super().connectionLost(reason)
        os.close(self.fd)
        self.fd = -1
        self._lost()

    def abort(self) -> None:
        """Close now, dropping anything not yet written."""
        if self.fd >= 0:
            self.connectionLost(Failure(main.CONNECTION_LOST))

    def logPrefix(self) -> str:
        return "exec-stdin"


class TerminalWriter(PipeWriter):
    """Keystrokes to a terminal's master end (a descriptor of its own): as a
    :class:`PipeWriter`, but never read, since what reads there is the
    command's output (:class:`PipeReader` on the other descriptor)."""

    watchHangup = False

    def logPrefix(self) -> str:
        return "exec-terminal"


@implementer(IReadDescriptor)
class ExitWatcher:
    """Calls ``exited()`` when the pidfd it watches becomes readable (the process exited)."""

    def __init__(self, reactor: Any, pidfd: int, exited: Callable[[], None]) -> None:
        self.reactor = reactor
        self.pidfd = pidfd
        self._exited = exited
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self) -> None:
        self._exited()

    def close(self) -> None:
        if self.pidfd >= 0:
            self.reactor.removeReader(self)
            os.close(self.pidfd)
            self.pidfd = -1

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "exec-pidfd"


@implementer(IAddress)
class CommandAddress:
    """The address of a process transport: the command's pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __repr__(self) -> str:
        return f"CommandAddress(pid={self.pid})"


@implementer(IProcessTransport, IPushProducer)
class CommandTransport:
    """One running command, seen from the reactor. See the module docstring.

    :param reactor: provides ``IReactorFDSet`` and ``IReactorTime`` (the clock
        for the kill grace period and polling).
    :param spawned: what :func:`netproto.exec.spawn.spawn` returned; this
        object owns its descriptors from now on.
    :param proto: the process protocol; its ``makeConnection`` is called here.
    :param readSize: the most bytes one read of an output pipe returns.
    :param killGrace: seconds between ``SIGTERM`` and ``SIGKILL`` when the
        group is ended.
    """

    def __init__(
        self,
        reactor: Any,
        spawned: Spawned,
        proto: ProcessProtocol,
        readSize: int,
        killGrace: float,
    ) -> None:
        self.reactor = reactor
        self.pid: int = spawned.pid
        self.proto = proto
        self.returncode: int | None = None
        self.ended = False
        self._child = spawned
        #: Whether the command runs on a terminal (PROTOCOL.md section 5).
        self.terminal = spawned.terminal
        self._exitPoll = TERMINAL_EXIT_POLL if self.terminal else EXIT_POLL
        self._paused = False
        self._exitTimer: IDelayedCall | None = None
        #: Ends the command's group (its ``onGone`` is the factory's
        #: bookkeeping); on a terminal, its whole session: each job of an
        #: interactive shell is a process group of its own.
        self.reaper = (
            GroupReaper(
                self.pid,
                reactor,
                killGrace,
                pollLeader=self._pollLeader,
                kill=_procs.killSession,
                reap=_procs.reapSession,
                endSignals=HANGUP,
            )
            if self.terminal
            else GroupReaper(self.pid, reactor, killGrace, pollLeader=self._pollLeader)
        )
        self.reaper.onEmptied = self._giveUpOutput
        self._ended: Failure | None = None
        self._stdin: PipeWriter | None = None
        if spawned.stdin is not None:
            writer = TerminalWriter if self.terminal else PipeWriter
            self._stdin = writer(reactor, spawned.stdin, self._stdinLost)
        # Output goes straight to the protocol's childDataReceived (a partial,
        # not a method of ours in between: it runs for every chunk and keystroke).
        received = proto.childDataReceived
        self._readers = {
            1: PipeReader(
                reactor, spawned.stdout, readSize, partial(received, 1), self._outClosed(1)
            )
        }
        if spawned.stderr >= 0:
            self._readers[2] = PipeReader(
                reactor, spawned.stderr, readSize, partial(received, 2), self._outClosed(2)
            )
        self._openOutputs = len(self._readers)
        # The exit is watched only once both output pipes have closed (see
        # _maybeEnded): X waits for them anyway, and most commands have
        # exited by then, which saves a reactor registration per command
        # (and the pidfd itself is only opened then, unless spawn made one).
        self._pidfd = spawned.pidfd
        self._watcher: ExitWatcher | None = None
        proto.makeConnection(self)
        for reader in self._readers.values():
            reader.startReading()
        if self.terminal:
            # A terminal's command is over when its first process exits (see
            # _hangUpAfterLeader): watched from the start.
            self._watchExit()

    # -- output --------------------------------------------------------------

    def _outClosed(self, fd: int) -> Callable[[], None]:
        def closed() -> None:
            self._openOutputs -= 1
            self.proto.childConnectionLost(fd)
            self._maybeEnded()

        return closed

    def pauseProducing(self) -> None:
        """Stop reading the output pipes (the consumer is full)."""
        self._paused = True
        for reader in self._readers.values():
            if reader.fd >= 0:
                reader.stopReading()

    def resumeProducing(self) -> None:
        self._paused = False
        for reader in self._readers.values():
            if reader.fd >= 0:
                reader.startReading()

    def stopProducing(self) -> None:
        """The consumer went away: end the command."""
        self.terminate()

    # -- stdin ---------------------------------------------------------------

    @property
    def stdinOpen(self) -> bool:
        return self._stdin is not None

    @property
    def stdinWriter(self) -> PipeWriter | None:
        """The stdin pipe's writer, to register the client's transport as its producer."""
        return self._stdin

    def write(self, data: bytes) -> None:
        if self._stdin is not None:
            self._stdin.write(data)

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        for data in seq:
            self.write(data)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        if childFD != 0:
            raise KeyError(childFD)
        self.write(data)

    def closeStdin(self) -> None:
        """End of input for the command, once what is buffered has been written;
        on a terminal, its end-of-file character (Ctrl-D), after what is buffered:
        the terminal stays open, as a user's does after Ctrl-D."""
        if self._stdin is None:
            return
        if self.terminal:
            self._stdin.write(_pty.endOfFile(self._stdin.fd))
        else:
            self._stdin.finish()

    def _terminalFd(self) -> int | None:
        """A descriptor of the terminal's master end while one is open (None
        for pipes): for its ``ioctl`` calls."""
        if not self.terminal:
            return None
        for fd in (self._readers[1].fd, self._stdin.fd if self._stdin is not None else -1):
            if fd >= 0:
                return fd
        return None

    def setWindow(self, rows: int, cols: int) -> bool:
        """Resize the terminal (its foreground process group gets ``SIGWINCH``);
        whether there was one to resize."""
        fd = self._terminalFd()
        if fd is not None:
            with contextlib.suppress(OSError):
                _pty.setWindow(fd, rows, cols)
                return True
        return False

    def _stdinLost(self) -> None:
        self._stdin = None
        self.proto.childConnectionLost(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)  # none on a terminal

    def closeChildFD(self, descriptor: int) -> None:
        if descriptor == 0:
            self.closeStdin()
        elif descriptor in self._readers:
            self._readers[descriptor].close()

    # -- signals and the end -------------------------------------------------

    @property
    def gone(self) -> bool:
        """Whether nothing of the command's group is left."""
        return self.reaper.gone

    @property
    def terminating(self) -> bool:
        """Whether the server has started ending the group (``SIGTERM`` or
        ``SIGKILL`` sent), also once it is gone: not for a command that ended
        by itself."""
        return self.reaper.terminated

    def signalProcess(self, signalID: str | int) -> None:
        """Signal the command's whole process group (``"INT"``, ``"KILL"``, ... or a number).

        On a terminal, the terminal's foreground process group instead (as
        its keys do: Ctrl-C interrupts the job in front, not its shell), or
        the command's group when there is none; ``SIGKILL`` ends the whole
        session, as for pipes.

        ``SIGKILL`` also gives up on output pipes still held, once the group
        is gone, by processes that left it: the command then ends.

        :raises ProcessExitedAlready: the group is gone, or empty with its
            first process reaped (its id may be another group's by now).
        """
        number = signalID if isinstance(signalID, int) else _spawn.signalNumber(signalID)
        if self.terminal and number != signal.SIGKILL and not self.reaper.gone:
            fd = self._terminalFd()
            group = _pty.foregroundGroup(fd) if fd is not None else None
            if group is not None and _procs.killSession(self.pid, number, group):
                return
        if not self.reaper.signal(number):
            raise ProcessExitedAlready()

    def terminate(self) -> None:
        """End the command's group: ``SIGTERM`` now, ``SIGKILL`` after the grace period."""
        self.reaper.terminate()
        if self._stdin is not None:
            self._stdin.abort()

    def _giveUpOutput(self) -> None:
        """After ``SIGKILL`` the group is empty, yet an output pipe is open: held
        by a process that left the group. Stop waiting for it; the command ends."""
        for reader in self._readers.values():
            reader.close()

    def loseConnection(self) -> None:
        self.terminate()

    def _watchExit(self) -> None:
        """Be told when the first process exits: its pidfd on the reactor, else polling."""
        if self._watcher is not None or self._exitTimer is not None:
            return
        if self._pidfd is None:
            # Still ours to open: only this transport reaps the pid.
            self._pidfd = _spawn.pidfdOpen(self.pid)
        if self._pidfd is not None:
            self._watcher = ExitWatcher(self.reactor, self._pidfd, self._checkExit)
            self._pidfd = None
        else:
            self._exitTimer = self.reactor.callLater(self._exitPoll, self._pollExit)

    def _pollLeader(self) -> bool:
        """For the reaper: reap the first process if it has exited; whether it is reaped."""
        self._checkExit()
        return self.returncode is not None

    def _checkExit(self) -> None:
        if self.returncode is not None:
            return
        returncode = self._child.poll()
        if returncode is None:
            return
        self.returncode = returncode
        self.reaper.leaderReaped()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._exitTimer is not None and self._exitTimer.active():
            self._exitTimer.cancel()
        self._exitTimer = None
        self.proto.processExited(self._reason())
        self._maybeEnded()
        self._hangUpAfterLeader()

    def _hangUpAfterLeader(self) -> None:
        """On a terminal, the first process (the shell) has exited while the
        terminal is still held open: by jobs it left running, which ignore the
        ``SIGHUP`` the kernel sent its foreground job. As sshd does when its
        shell exits, hang the terminal up: the session is ended (``SIGHUP``,
        ``SIGTERM``, then ``SIGKILL``), its last holders close it, and the
        command ends with the first process's status. (On pipes, a command
        lasts while anything holds its output open.)"""
        if self.terminal and not self.ended and _procs.liveSessions({self.pid}):
            self.reaper.terminate()

    def _pollExit(self) -> None:
        self._exitTimer = None
        self._checkExit()
        if self.returncode is None:
            self._exitTimer = self.reactor.callLater(self._exitPoll, self._pollExit)

    def _reason(self) -> Failure:
        """How the process ended, made once (``processExited`` and
        ``processEnded`` get the same ``Failure``: each one costs)."""
        if self._ended is not None:
            return self._ended
        code = self.returncode
        assert code is not None
        if code == 0:
            self._ended = Failure(ProcessDone(0))
        elif code < 0:
            self._ended = Failure(ProcessTerminated(None, -code, None))
        else:
            self._ended = Failure(ProcessTerminated(code, None, None))
        return self._ended

    def _maybeEnded(self) -> None:
        if self.ended or self._openOutputs:
            return
        if self.returncode is None:
            # Both pipes are closed: usually the process has just exited, and
            # _checkExit comes back here; otherwise wait for its exit.
            self._checkExit()
            if self.returncode is None:
                self._watchExit()
            return
        self.ended = True
        if self._stdin is not None:
            self._stdin.abort()
        self.proto.processEnded(self._reason())
        self.reaper.commandEnded()

    def whenGone(self) -> Deferred[None]:
        """Fires once the command and every process of its group are gone and reaped."""
        return self.reaper.whenGone()

    # -- ITransport odds and ends ----------------------------------------------

    def getPeer(self) -> CommandAddress:
        return CommandAddress(self.pid)

    def getHost(self) -> CommandAddress:
        return CommandAddress(self.pid)
