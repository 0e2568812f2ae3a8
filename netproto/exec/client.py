"""``netproto exec``: run a command on the server, like ``ssh HOST CMD``.

Output is streamed to the local stdout and stderr as it arrives, each to its
own; the local descriptors are written without blocking the reactor, and a
slow local reader slows the remote command (backpressure). Stdin is
forwarded when it is not a terminal, or with ``-i``; ``-n`` never forwards
it. Ctrl-C is sent to the command as ``S INT`` (a third Ctrl-C gives up and
disconnects, which ends the command).

The exit status is the command's: its exit code, 128+N when signal N ended
it, 127 when the server has no such program, 126 when its policy refuses it,
141 when the local stdout was closed (as ``SIGPIPE`` would give), and 255 for
the client's own errors (no connection, authentication, protocol).

With ``-t``, or without a command (the login shell), the command runs on a
terminal: see :mod:`netproto.exec.terminal`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from twisted.internet import fdesc, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.client.connection import (
    addAuthArguments,
    addConnectionArguments,
    clientEndpoint,
    credentials,
)
from netproto.client.framed import ClientError, FramedClient, ServerError, connectFramed
from netproto.codec import decodeJSON

DEFAULT_PORT: Final = 8001
#: Exit status for the client's own failures, as ssh uses.
OWN_ERROR: Final = 255
#: Exit statuses for refusals, as a shell gives them.
REFUSAL_STATUS: Final = {"not-found": 127, "not-allowed": 126}
#: Exit status when the local stdout is closed under us (128 + SIGPIPE).
BROKEN_PIPE: Final = 128 + signal.SIGPIPE
#: Ctrl-C presses after which the client stops waiting and disconnects.
INTERRUPTS_TO_QUIT: Final = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] [-t] [--] [CMD [ARGS...]]"
    parser.add_argument(
        "-t",
        "--tty",
        action="count",
        default=0,
        help="run CMD on a terminal, the local one raw meanwhile, as ssh -t (needs a local "
        "terminal; -tt forces one without); without CMD, the login shell on a terminal; "
        "~. at a line's start disconnects",
    )
    parser.add_argument(
        "--shell",
        action="store_true",
        help="run CMD ARGS... joined by spaces as a /bin/sh command line on the server",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="end the command after S seconds"
    )
    stdin = parser.add_mutually_exclusive_group()
    stdin.add_argument(
        "-i",
        "--stdin",
        action="store_true",
        help="forward stdin even when it is a terminal (by default only when it is not)",
    )
    stdin.add_argument(
        "-n", "--no-stdin", action="store_true", help="never forward stdin (as ssh -n)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for the command (repeatable; the server decides which it takes)",
    )
    parser.add_argument("--cwd", metavar="DIR", help="directory to run in (on the server)")
    # Not "command": the top-level parser keeps the subcommand's name there.
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]")
    addConnectionArguments(parser, DEFAULT_PORT)
    addAuthArguments(parser)


def buildRequest(args: argparse.Namespace) -> dict[str, Any]:
    """The ``R`` payload for the parsed arguments."""
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    request: dict[str, Any]
    if not command:
        if getattr(args, "localTerminal", None) is None or args.shell:
            raise ClientError(
                "no command given (netproto exec [options] -- CMD [ARGS...])", OWN_ERROR
            )
        request = {}  # the login shell (pty is added once connected)
    else:
        request = {"shell": " ".join(command)} if args.shell else {"argv": command}
    if args.timeout is not None:
        if not args.timeout > 0:
            raise ClientError("--timeout must be a positive number of seconds", OWN_ERROR)
        request["timeout"] = args.timeout
    if args.env:
        env = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ClientError(f"--env {item!r}: expected NAME=VALUE", OWN_ERROR)
            env[name] = value
        request["env"] = env
    if args.cwd:
        request["cwd"] = args.cwd
    return request


def prepare(args: argparse.Namespace) -> None:
    """Before the reactor: check the command line, read the credentials (may prompt)."""
    from netproto.exec.terminal import chooseTerminal

    args.localTerminal = chooseTerminal(args, _isatty)
    args.request = buildRequest(args)
    args.forwardStdin = not args.no_stdin and (args.stdin or not _isatty(0))
    try:
        args.auth = credentials(args)
    except ClientError as e:
        raise ClientError(str(e), OWN_ERROR) from None


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


# -- local descriptors ---------------------------------------------------------


@implementer(IPushProducer)
class _Flow:
    """Told by a :class:`LocalOutput` when its buffer is full and when it has drained."""

    def __init__(self) -> None:
        self.paused = False
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.paused:
            self._waiters.append(d)
        else:
            d.callback(None)
        return d

    def _release(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self._release()

    def stopProducing(self) -> None:
        self._release()


class LocalOutput(FileDescriptor):
    """The local stdout or stderr, written without blocking the reactor.

    The descriptor is made non-blocking while in use; :meth:`finish` writes
    what is buffered and restores its flags (it is never closed: it is not
    ours). ``broken`` is set once the reader went away (``EPIPE``).
    """

    bufferSize = 1 << 20

    def __init__(self, reactor: Any, fd: int) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.broken = False
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fdesc.setNonBlocking(fd)
        self.connected = 1
        self.flow = _Flow()
        self.registerProducer(self.flow, True)
        self._done: Deferred[None] = Deferred()

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data: bytes) -> int | BaseException:
        written: int | BaseException = fdesc.writeToFD(self.fd, data)
        return written

    async def send(self, data: bytes) -> None:
        """Write ``data``; returns once the buffer is below its bound again."""
        self.write(data)
        if self.flow.paused:
            await self.flow.wait()

    def finish(self) -> Deferred[None]:
        """Fires once everything buffered has been written (or can no longer be)."""
        if self.producer is not None:
            self.unregisterProducer()
        self.loseConnection()
        return self._done

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        if not reason.check(ConnectionDone):
            self.broken = True
        super().connectionLost(reason)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
        self.fd = -1
        self.flow.stopProducing()
        if not self._done.called:
            self._done.callback(None)

    def logPrefix(self) -> str:
        return "local-output"


class LocalInput(FileDescriptor):
    """The local stdin, forwarded as ``0`` frames and a ``C`` at its end.

    It is the client connection's streaming producer: when the connection's
    buffer is full, stdin is not read (backpressure).
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        client: FramedClient,
        chunk: int,
        forward: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.client: FramedClient | _Closed = client
        self.chunk = chunk
        #: What is done with what was read: sent as a ``0`` frame unless given
        #: (a terminal's keys go through the escape filter first).
        self.forward = forward
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fdesc.setNonBlocking(fd)
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, self.chunk)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        if self.forward is not None:
            self.forward(data)
        else:
            self.client.send(b"0", data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        super().connectionLost(reason)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
        self.fd = -1
        transport = self.client.transport
        if transport is not None and self.client.connected:
            IConsumer(transport).unregisterProducer()
            self.client.send(b"C")

    def stop(self) -> None:
        """The command has ended (or the connection has): stop reading, send nothing more."""
        if self.fd >= 0:
            client, self.client = self.client, _Closed()
            if client.transport is not None and client.connected:
                IConsumer(client.transport).unregisterProducer()
            self.stopReading()
            self.connectionLost(Failure(main.CONNECTION_DONE))

    def stopProducing(self) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return "local-input"


class _Closed:
    """Stands in for the client once stdin no longer goes anywhere."""

    transport = None
    connected = False

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        pass


# -- the run -----------------------------------------------------------------


def exitFields(payload: bytes) -> dict[str, Any]:
    """An ``X`` frame's payload; :class:`ClientError` if it is not a JSON object."""
    try:
        return decodeJSON(payload)
    except Exception:
        raise ClientError("protocol error: X payload is not JSON") from None


def exitStatus(fields: dict[str, Any]) -> int:
    """The local exit status for an ``X`` payload."""
    code, sig = fields.get("code"), fields.get("signal")
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    if isinstance(sig, str):
        try:
            return 128 + int(signal.Signals[f"SIG{sig}"])
        except KeyError:
            return OWN_ERROR
    return OWN_ERROR


async def run(reactor: Any, args: argparse.Namespace) -> int:
    if not hasattr(args, "request"):
        prepare(args)
    try:
        client = await connectFramed(clientEndpoint(reactor, args), "exec", args.auth)
    except ClientError as e:
        raise ClientError(str(e), OWN_ERROR) from None
    try:
        return await _runCommand(reactor, args, client)
    except ServerError as e:
        raise ClientError(str(e), REFUSAL_STATUS.get(e.code, OWN_ERROR)) from None
    except ClientError as e:
        raise ClientError(str(e), OWN_ERROR) from None
    finally:
        client.close()


async def _runCommand(reactor: Any, args: argparse.Namespace, client: FramedClient) -> int:
    if getattr(args, "localTerminal", None) is not None:
        from netproto.exec.terminal import runOnTerminal

        return await runOnTerminal(reactor, args, client, args.request)
    request = dict(args.request)
    if args.forwardStdin:
        request["stdin"] = True
    client.sendJSON(b"R", request)
    started = await client.receiveJSON(b"K")
    if not isinstance(started.get("pid"), int):
        raise ClientError("protocol error: K without a pid")
    stdout, stderr = LocalOutput(reactor, 1), LocalOutput(reactor, 2)
    stdin: LocalInput | None = None
    if args.forwardStdin:
        stdin = LocalInput(reactor, 0, client, max(1, client.maxFrame - 1))
        assert client.transport is not None
        IConsumer(client.transport).registerProducer(stdin, True)
        stdin.startReading()
    interrupts = _Interrupts(reactor, client)
    try:
        while True:
            try:
                kind, payload = await client.receive()
            except ClientError:
                if interrupts.gaveUp:
                    return 128 + signal.SIGINT
                raise
            if kind in {b"1", b"2"}:
                out = stdout if kind == b"1" else stderr
                if out.broken:
                    if out is stdout:
                        break
                    continue  # nowhere to show stderr: drop it
                await out.send(payload)
            elif kind == b"X":
                fields = exitFields(payload)
                if fields.get("timed_out"):
                    await stderr.send(b"netproto exec: the command timed out\n")
                return exitStatus(fields)
            else:
                raise ClientError(f"protocol error: unexpected {kind!r} frame")
        client.close()
        return BROKEN_PIPE
    finally:
        interrupts.restore()
        if stdin is not None:
            stdin.stop()
        await stdout.finish()
        await stderr.finish()


class _Interrupts:
    """While a command runs, Ctrl-C becomes ``S INT``; the third one disconnects."""

    def __init__(self, reactor: Any, client: FramedClient) -> None:
        self.reactor = reactor
        self.client = client
        self.presses = 0
        self.gaveUp = False
        self._previous: Any = None
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        except ValueError:  # not the main thread (a test driving run() directly)
            self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes: hand over to the reactor.
        self.reactor.callFromThread(self.interrupt)

    def interrupt(self) -> None:
        self.presses += 1
        if not self.client.connected:
            return
        if self.presses >= INTERRUPTS_TO_QUIT:
            self.gaveUp = True
            print("netproto exec: disconnecting; the server ends the command", file=sys.stderr)
            self.client.close()
        else:
            self.client.sendJSON(b"S", {"signal": "INT"})

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
