"""``netproto chat``: the client side of the chat service.

Two modes, chosen by whether stdin and stdout are a terminal:

- interactive: the terminal goes into raw mode and :class:`ChatTerminal` (a
  ``twisted.conch.recvline.HistoricRecvLine`` on ``twisted.conch.insults``) edits the
  line being typed; a line arriving from the server is printed *above* it: the
  input row is erased, the line written, and the prompt and the typed text drawn
  again with the cursor where it was. So nothing garbles what the user is typing.
- non-interactive (a pipe or a file): lines from stdin are sent as they are, what
  the server sends is printed, and at the end of stdin the client sends ``/quit``
  (unless it was sent already) and exits once the server has closed the connection:
  ``printf 'hello\\n/quit\\n' | netproto chat``.

``--nick`` and ``--room`` are sent as ``/nick`` and ``/join`` right after connecting.
The exit status is 0 when the session ended with ``/quit``, 1 when the server
closed it for another reason (``! server full``, idle timeout), 2 when the
connection could not be made.
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
from typing import Any

from twisted.conch.insults import insults
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.client.connection import addConnectionArguments, clientEndpoint
from netproto.client.framed import ClientError

DEFAULT_PORT = 8000

#: Control characters are never written to the user's terminal, whatever the server sends.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def configure(parser: argparse.ArgumentParser) -> None:
    addConnectionArguments(parser, DEFAULT_PORT)
    parser.add_argument("--nick", metavar="NAME", help="nick to take on connecting (/nick NAME)")
    parser.add_argument("--room", metavar="ROOM", help="room to join on connecting (/join ROOM)")


def isQuit(line: bytes) -> bool:
    """Whether ``line`` is a ``/quit`` command (any case, with or without a reason)."""
    word = line.strip().split(b" ", 1)[0]
    return word.lower() == b"/quit"


def printable(line: bytes) -> str:
    """A server line as text safe to show on a terminal."""
    return _CONTROL.sub("", line.decode("utf-8", "replace"))


class ChatConnection(LineOnlyReceiver):
    """The connection to the chat server: hands each line to ``show``."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20  # the server's lines are short; this only bounds a broken one

    def __init__(self) -> None:
        self.show: Any = lambda line: None
        self.quitSent = False
        self.closed: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.show(line.removesuffix(b"\r"))

    def send(self, line: bytes) -> None:
        if isQuit(line):
            self.quitSent = True
        self.sendLine(line)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


@implementer(IHalfCloseableProtocol)
class StdinLines(LineOnlyReceiver):
    """Non-interactive mode: stdin lines go to the server, server lines to stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, conn: ChatConnection) -> None:
        self.conn = conn
        self.done: Deferred[None] = Deferred()
        self.outputGone = False
        conn.show = self.showLine

    def showLine(self, line: bytes) -> None:
        if not self.outputGone:
            assert self.transport is not None
            self.transport.write(printable(line).encode("utf-8") + b"\n")

    def lineReceived(self, line: bytes) -> None:
        self.conn.send(line.removesuffix(b"\r"))

    def readConnectionLost(self) -> None:
        """End of stdin: leave politely; the server's close ends the program."""
        if not self.conn.quitSent and self.conn.transport is not None:
            self.conn.send(b"/quit")

    def writeConnectionLost(self) -> None:
        """stdout is gone (e.g. ``| head``): nobody reads what the server says; leave."""
        self.outputGone = True
        if self.conn.transport is not None:
            self.conn.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class ChatTerminal(HistoricRecvLine):
    """Interactive mode: line editing with history; incoming lines above the input line."""

    ps = (b"> ", b"> ")

    def __init__(self, conn: ChatConnection) -> None:
        self.conn = conn
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.done: Deferred[None] = Deferred()
        conn.show = self.showLine

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)

    def initializeScreen(self) -> None:
        # RecvLine would reset (clear) the whole terminal; a chat keeps the scrollback.
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def showLine(self, line: bytes) -> None:
        """Print ``line`` above the input line, then redraw the input as it was."""
        t = self.terminal
        t.write(b"\r")
        t.eraseLine()
        t.write(printable(line).encode("utf-8") + b"\n")  # insults writes \n as CRLF
        self.drawInputLine()
        back = len(self.lineBuffer) - self.lineBufferIndex
        if back:
            t.cursorBackward(back)

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if keyID == b"\x03" or (keyID == b"\x04" and not self.lineBuffer):  # Ctrl-C, Ctrl-D
            self.terminal.write(b"\n")
            if not self.conn.quitSent:
                self.conn.send(b"/quit")
            return
        if keyID == b"\x15":  # Ctrl-U: clear the line
            self.handle_HOME()
            self.terminal.eraseToLineEnd()
            self.lineBuffer, self.lineBufferIndex = [], 0
            return
        if isinstance(keyID, bytes) and len(keyID) == 1 and keyID[0] >= 0x80:
            # UTF-8: one list entry per character, so the cursor moves by characters.
            text = self._utf8.decode(keyID)
            if text:
                self.characterReceived(text.encode("utf-8"), False)
            return
        super().keystrokeReceived(keyID, modifier)

    def handle_RETURN(self) -> None:
        line = b"".join(self.lineBuffer)
        if line:
            self.historyLines.append(line)
        self.historyPosition = len(self.historyLines)
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.terminal.write(b"\n")
        if line.strip():
            self.conn.send(line)
        self.drawInputLine()


async def run(reactor: Any, args: argparse.Namespace) -> int:
    endpoint = clientEndpoint(reactor, args)
    conn = ChatConnection()
    try:
        await connectProtocol(endpoint, conn)
    except (error.ConnectError, error.DNSLookupError, OSError) as e:
        raise ClientError(f"cannot connect: {e}", 2) from None
    if args.nick:
        conn.send(b"/nick " + args.nick.encode("utf-8"))
    if args.room:
        conn.send(b"/join " + args.room.encode("utf-8"))
    if sys.stdin.isatty() and sys.stdout.isatty():
        await _interactive(reactor, conn)
    else:
        lines = StdinLines(conn)
        stdio = StandardIO(lines, reactor=reactor)
        await conn.closed
        if not lines.outputGone:
            stdio.loseConnection()  # flushes what is still to be written to stdout
            await lines.done
    if not conn.quitSent:
        raise ClientError("the server closed the connection", 1)
    return 0


async def _interactive(reactor: Any, conn: ChatConnection) -> None:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        server = insults.ServerProtocol(ChatTerminal, conn)
        stdio = StandardIO(server, reactor=reactor)
        terminal = server.terminalProtocol
        assert isinstance(terminal, ChatTerminal)
        await conn.closed
        stdio.write(b"\r\n")
        stdio.loseConnection()  # flushes the terminal output, then fires `done`
        await terminal.done
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
