"""Removing telnet IAC sequences from chat input: a small sans-IO filter.

PROTOCOL.md section 1: IAC sequences are removed from input and never relayed.
The real ``telnet`` program sends none unless asked (it does not negotiate on a
port other than 23), but it does send some when its user presses Ctrl-C
(``IAC IP``) or asks for ``send ayt``; other clients open with option offers.

Why not :class:`twisted.conch.telnet.Telnet`: it walks every byte in Python, keeps
per-connection dictionaries (about a kilobyte) that 5000 idle netcat users would
pay for, and raises ``ValueError("Stumped")`` on an IAC followed by a byte it does
not know, which a netcat user can send by accident. This filter holds two small
integers, is created only once a 0xFF byte arrives (see
:meth:`netproto.chat.protocol.ChatProtocol.dataReceived`), and skips from one
0xFF to the next with ``bytes.find``. It answers option offers as a telnet
implementation that supports no options must (RFC 854, RFC 1143): ``WILL`` gets
``DONT`` and ``DO`` gets ``WONT``; ``WONT`` and ``DONT`` get nothing, so two peers
can never loop.
"""

from __future__ import annotations

IAC = 0xFF
DONT = 0xFE
DO = 0xFD
WONT = 0xFC
WILL = 0xFB
SB = 0xFA
SE = 0xF0

_DATA, _COMMAND, _OPTION, _SUB, _SUB_IAC = range(5)

#: A subnegotiation longer than this is not telnet: the peer sent an IAC SB by
#: accident. The filter goes back to passing data through instead of swallowing
#: the rest of the connection.
MAX_SUBNEGOTIATION = 1024


class TelnetFilter:
    """Feed it input bytes; it returns the data without IAC sequences and the replies to send.

    State carries across calls, so a sequence split between two reads is still removed.
    """

    __slots__ = ("_state", "_subLength", "_verb")

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0
        self._subLength = 0

    @property
    def idle(self) -> bool:
        """True between sequences: input without 0xFF may then bypass the filter."""
        return self._state == _DATA

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """``(application data, bytes to send back)`` for the next input bytes."""
        out: list[bytes] = []
        reply = bytearray()
        state = self._state
        i, n = 0, len(data)
        while i < n:
            if state == _DATA:
                j = data.find(b"\xff", i)
                if j < 0:
                    out.append(data[i:])
                    break
                out.append(data[i:j])
                i, state = j + 1, _COMMAND
                continue
            if state == _SUB:
                j = data.find(b"\xff", i)
                end = n if j < 0 else j
                self._subLength += end - i
                if self._subLength > MAX_SUBNEGOTIATION:
                    state = _DATA
                    continue
                if j < 0:
                    break
                i, state = j + 1, _SUB_IAC
                continue
            byte = data[i]
            i += 1
            if state == _COMMAND:
                if byte in (WILL, WONT, DO, DONT):
                    self._verb, state = byte, _OPTION
                elif byte == SB:
                    self._subLength, state = 0, _SUB
                else:
                    # IAC IAC is an escaped 0xFF data byte, never valid UTF-8 text,
                    # so it is dropped; two-byte commands (NOP, IP, AYT, ...) are ignored.
                    state = _DATA
            elif state == _OPTION:
                if self._verb == WILL:
                    reply += bytes((IAC, DONT, byte))
                elif self._verb == DO:
                    reply += bytes((IAC, WONT, byte))
                state = _DATA
            else:  # _SUB_IAC: IAC SE ends it; IAC IAC (or a stray byte) stays inside
                state = _DATA if byte == SE else _SUB
        self._state = state
        return b"".join(out), bytes(reply)
