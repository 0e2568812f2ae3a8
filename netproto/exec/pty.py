"""The server's side of a terminal: a pseudo-terminal for one command (PROTOCOL.md section 5).

A command started with ``"pty"`` gets the *slave* end of a new
pseudo-terminal as its stdin, stdout and stderr and as its controlling
terminal (it is the leader of a new session, as every command is); the
server keeps the *master* end. What the command writes is read from the
master (and sent as ``1`` frames: the terminal merges the two streams);
keystrokes are written to it. The kernel's line discipline in between does
the rest: echo, line editing, and turning Ctrl-C into ``SIGINT`` for the
terminal's foreground process group.

This module holds the few terminal calls (``ioctl`` and ``termios``) and the
checks of what a client may ask; the spawning is
:func:`netproto.exec.spawn.spawn`'s, the reading and writing
:class:`~netproto.exec.transport.CommandTransport`'s, and the end of every
process of the terminal's session :mod:`netproto.exec.procs`'.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from netproto.errors import ProtocolError

#: The largest number of rows or columns a client may ask for. Far above any
#: screen (an 8K display in a 4-pixel font is under 2,000 columns), and
#: programs size their buffers by it: ``rows x cols`` cells stay under 10^8.
MAX_WINDOW: Final = 10_000
#: The longest ``term`` accepted: terminfo names are short (``xterm-256color``
#: is 14 characters); a longer one is a mistake or an attempt to bloat the
#: environment of every command.
MAX_TERM: Final = 64
#: What a ``term`` may hold: the characters of terminfo names. No slash (the
#: name is looked up as a file under the terminfo directories), no space or
#: control character (it lands in the environment and in logs).
TERM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: The ``term`` of a request that gives none: what makes programs assume the
#: least of the terminal.
DEFAULT_TERM: Final = "dumb"
#: Rows and columns of a request that gives none: the classic terminal.
DEFAULT_WINDOW: Final = (24, 80)


@dataclass(frozen=True)
class Terminal:
    """What a client asked of its terminal: ``TERM`` and the window size."""

    term: str
    rows: int
    cols: int


def windowSize(
    request: Mapping[str, Any], default: tuple[int, int] | None = None
) -> tuple[int, int]:
    """``rows`` and ``cols`` of a ``W`` payload or of ``R``'s ``"pty"``.

    :param default: used for a missing field (a ``pty`` may leave them out);
        without it both are required (a ``W`` frame).
    :raises ProtocolError: ``bad-frame`` for anything but integers from 1 to
        :data:`MAX_WINDOW`.
    """
    sizes = []
    for i, name in enumerate(("rows", "cols")):
        value = request.get(name, None if default is None else default[i])
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW:
            raise ProtocolError("bad-frame", f'"{name}" must be an integer from 1 to {MAX_WINDOW}')
        sizes.append(value)
    return sizes[0], sizes[1]


def parseTerminal(value: object) -> Terminal:
    """The ``"pty"`` object of an ``R`` request.

    :raises ProtocolError: ``bad-frame`` if it is malformed.
    """
    if not isinstance(value, dict):
        raise ProtocolError("bad-frame", '"pty" must be an object: {"term", "rows", "cols"}')
    term = value.get("term", DEFAULT_TERM)
    if not isinstance(term, str) or len(term) > MAX_TERM or not TERM_NAME.fullmatch(term):
        raise ProtocolError(
            "bad-frame",
            f'"term" must be a terminal name (letters, digits, ".", "_", "+", "-"; '
            f"at most {MAX_TERM})",
        )
    rows, cols = windowSize(value, DEFAULT_WINDOW)
    return Terminal(term, rows, cols)


def openTerminal(rows: int, cols: int) -> tuple[int, int]:
    """A new pseudo-terminal of ``rows`` x ``cols``: its master end (non-blocking)
    and its slave end, neither inherited by children."""
    master, slave = os.openpty()
    try:
        setWindow(master, rows, cols)
        os.set_blocking(master, False)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def setWindow(fd: int, rows: int, cols: int) -> None:
    """Set the terminal's window size; the kernel sends ``SIGWINCH`` to its
    foreground process group when it changes."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def getWindow(fd: int) -> tuple[int, int]:
    """The terminal's rows and columns."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def endOfFile(fd: int) -> bytes:
    """The terminal's end-of-file character (``VEOF``, Ctrl-D unless changed):
    what ``C`` writes. Ctrl-D when the terminal's settings cannot be read."""
    try:
        eof = termios.tcgetattr(fd)[6][termios.VEOF]
    except (termios.error, OSError):
        return b"\x04"
    return eof if isinstance(eof, bytes) and eof != b"\0" else b"\x04"


def foregroundGroup(fd: int) -> int | None:
    """The terminal's foreground process group (where Ctrl-C's ``SIGINT`` goes),
    or None once it has none (its session leader gone, the terminal hung up)."""
    try:
        pgid = os.tcgetpgrp(fd)
    except OSError:
        return None
    return pgid if pgid > 0 else None


def takeControllingTerminal() -> None:
    """In the child, after ``setsid`` and before ``exec``: make its stdin, the
    terminal's slave end, its controlling terminal (``TIOCSCTTY``), so that
    Ctrl-C, job control and ``/dev/tty`` work."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
