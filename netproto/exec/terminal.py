"""``netproto exec -t``: the client's side of a terminal, like ``ssh -t`` (PROTOCOL.md section 5).

While the remote command runs on its terminal, the local one is in raw mode:
every key (Ctrl-C and Ctrl-D included) goes to the server as bytes and the
remote terminal decides what it means; what comes back is written as it is.
The local terminal is put back as it was whatever ends the session: the
command's exit, an error, the server going away, an exception, or a signal
(``SIGHUP``, ``SIGINT``, ``SIGTERM`` from outside end the session, and the
client exits 128 + N, as a shell reports a command ended by signal N; the
restoring is also a shutdown trigger of the reactor and an ``atexit`` hook;
only ``SIGKILL`` defeats it, as it does ssh).

The window size is sent with the request and again (``W``) at every
``SIGWINCH``. ``~.`` at the start of a line disconnects, as in ssh (``~~``
sends one ``~``); ``~`` followed by anything else is sent as typed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import os
import signal
import sys
import termios
import tty
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any, Final

from netproto.client.framed import ClientError, FramedClient
from netproto.exec import pty as _pty
from netproto.exec.client import OWN_ERROR, LocalInput, LocalOutput, exitFields, exitStatus

#: Exit status after ``~.`` (the client's own ending, as ssh's 255).
DISCONNECTED: Final = OWN_ERROR
#: The escape character, and what it does after it at a line's start.
ESCAPE: Final = b"~"
QUIT: Final = b"."
#: What starts a line (after it, ``~`` is the escape).
LINE_ENDS: Final = frozenset(b"\r\n")
#: Signals from outside that end the session (the local terminal closed,
#: ``kill``); in raw mode, keys send none.
ENDING_SIGNALS: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


class EscapeFilter:
    """Keystrokes in, what to send out: ``~.`` at a line's start means disconnect.

    Sans-IO: :meth:`feed` takes what was read from the keyboard and returns
    the bytes to send and whether to disconnect. A ``~`` at a line's start is
    held until the next key decides: ``.`` disconnects, ``~`` sends one ``~``,
    anything else sends both.
    """

    def __init__(self) -> None:
        self.atLineStart = True
        self.holding = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if not self.holding and ESCAPE not in data:
            # Most reads (keys, pastes) hold no ~: pass them whole.
            if data:
                self.atLineStart = data[-1] in LINE_ENDS
            return data, False
        out = bytearray()
        for byte in data:
            key = bytes((byte,))
            if self.holding:
                self.holding = False
                if key == QUIT:
                    return bytes(out), True
                if key != ESCAPE:
                    out += ESCAPE
            elif self.atLineStart and key == ESCAPE:
                self.holding = True
                continue
            out += key
            self.atLineStart = byte in LINE_ENDS
        return bytes(out), False


class LocalTerminal:
    """The local terminal's settings and descriptor flags, put back once whatever happens.

    :param fds: the local descriptors whose flags (``O_NONBLOCK``) the session
        changes: stdin and stdout, often one open terminal, whose flags are shared.
    :param raw: the descriptor of the terminal to put in raw mode, or None
        when there is no local terminal (``-tt`` without one).
    """

    def __init__(self, fds: tuple[int, ...], raw: int | None) -> None:
        self.raw = raw
        self._flags = [(fd, fcntl.fcntl(fd, fcntl.F_GETFL)) for fd in fds]
        self._saved = termios.tcgetattr(raw) if raw is not None else None
        self.restored = False

    def enter(self) -> None:
        """Raw mode: no echo, no line editing, no signals from keys, output as it comes."""
        atexit.register(self.restore)
        if self.raw is not None:
            tty.setraw(self.raw, termios.TCSADRAIN)

    def restore(self) -> None:
        """Put everything back (idempotent)."""
        if self.restored:
            return
        self.restored = True
        atexit.unregister(self.restore)
        for fd, flags in self._flags:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                continue
        if self.raw is not None and self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.raw, termios.TCSADRAIN, self._saved)


def localWindow(fd: int | None) -> tuple[int, int]:
    """The local terminal's rows and columns; the classic 24 x 80 without one."""
    if fd is not None:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            pass
        else:
            if size.lines > 0 and size.columns > 0:
                return size.lines, size.columns
    return _pty.DEFAULT_WINDOW


def terminalRequest(fd: int | None, term: str | None) -> dict[str, Any]:
    """The ``"pty"`` of ``R``: ``TERM`` (``dumb`` for a name the server would
    refuse) and the local window."""
    if not term or len(term) > _pty.MAX_TERM or not _pty.TERM_NAME.fullmatch(term):
        term = _pty.DEFAULT_TERM
    rows, cols = localWindow(fd)
    return {"term": term, "rows": rows, "cols": cols}


def chooseTerminal(args: argparse.Namespace, isatty: Callable[[int], bool]) -> int | None:
    """Whether this run gets a terminal, and which local descriptor is the terminal.

    A terminal when ``-t`` is given or there is no command (the login
    shell). It needs a local terminal on stdin; ``-tt`` forces one without.

    :returns: the local terminal's descriptor (0), or -1 for a remote
        terminal without a local one, or None for no terminal.
    :raises ClientError: a terminal is wanted and stdin is not one.
    """
    command = [word for word in args.argv if word != "--"]
    wanted = args.tty or (0 if command else 1)
    if not wanted:
        return None
    if isatty(0):
        return 0
    if wanted >= 2:
        return -1
    what = "-t" if command else "a login shell (no command)"
    raise ClientError(
        f"{what} needs a terminal, and stdin is not one: give -tt to have one on the "
        "server anyway, or a command without -t",
        OWN_ERROR,
    )


async def runOnTerminal(
    reactor: Any, args: argparse.Namespace, client: FramedClient, request: dict[str, Any]
) -> int:
    """Run ``request`` on a remote terminal, the local one raw meanwhile; the exit status."""
    hello = client.hello
    if hello is not None and "pty" not in hello.features:
        raise ClientError('the server offers no terminals (its exec has no "pty")')
    local = args.localTerminal if args.localTerminal >= 0 else None
    request = {**request, "pty": terminalRequest(local, os.environ.get("TERM"))}
    client.sendJSON(b"R", request)
    started = await client.receiveJSON(b"K")
    if not isinstance(started.get("pid"), int):
        raise ClientError("protocol error: K without a pid")
    terminal = LocalTerminal((0, 1), local)
    shutdown = reactor.addSystemEventTrigger("before", "shutdown", terminal.restore)
    terminal.enter()
    escape = EscapeFilter() if local is not None else None
    signals = LocalSignals(reactor, client, local)
    stdout = LocalOutput(reactor, 1)
    keys: LocalInput | None = None
    disconnected: list[bool] = []

    def forward(data: bytes) -> None:
        quit = False
        if escape is not None:
            data, quit = escape.feed(data)
        if data and not disconnected:
            client.send(b"0", data)
        if quit and not disconnected:
            disconnected.append(True)
            client.close()

    try:
        if not args.no_stdin:
            keys = LocalInput(reactor, 0, client, max(1, client.maxFrame - 1), forward)
            keys.startReading()
        while True:
            try:
                kind, payload = await client.receive()
            except ClientError:
                if disconnected:
                    raise ClientError("disconnected (~.)", DISCONNECTED) from None
                if signals.ending is not None:
                    return 128 + signals.ending
                raise
            if kind in {b"1", b"2"}:
                if not stdout.broken:
                    await stdout.send(payload)
            elif kind == b"X":
                return exitStatus(exitFields(payload))
            else:
                raise ClientError(f"protocol error: unexpected {kind!r} frame")
    finally:
        signals.stop()
        if keys is not None:
            keys.stop()
        await stdout.finish()
        if not terminal.restored:  # else the reactor's shutdown did, and took its trigger
            terminal.restore()
            reactor.removeSystemEventTrigger(shutdown)
        if signals.ending is not None:
            name = signal.Signals(signals.ending).name
            sys.stderr.write(f"netproto exec: ended by {name}; the server ends the command\n")


class LocalSignals:
    """The local signals while the session runs: ``SIGWINCH`` sends ``W`` when
    the size differs from the last one sent; :data:`ENDING_SIGNALS` end the
    session (the connection is closed, which makes the server end the command)."""

    def __init__(self, reactor: Any, client: FramedClient, fd: int | None) -> None:
        self.reactor = reactor
        self.client = client
        self.fd = fd
        self.last = localWindow(fd)
        #: The signal that ended the session, if one did.
        self.ending: int | None = None
        self._previous: dict[int, Any] = {}
        actions: dict[int, Callable[[], None]] = {
            sig: partial(self.end, sig) for sig in ENDING_SIGNALS
        }
        if fd is not None:
            actions[signal.SIGWINCH] = self.changed
        for sig, action in actions.items():
            try:
                self._previous[sig] = signal.signal(sig, self._handler(action))
            except ValueError:  # not the main thread (a test driving run() directly)
                break

    def _handler(self, action: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            # A signal handler runs between any two bytecodes: hand over to the reactor.
            self.reactor.callFromThread(action)

        return handler

    def changed(self) -> None:
        size = localWindow(self.fd)
        if size != self.last and self.client.connected:
            self.last = size
            self.client.sendJSON(b"W", {"rows": size[0], "cols": size[1]})

    def end(self, signum: int) -> None:
        if self.ending is None:
            self.ending = signum
            self.client.close()

    def stop(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
