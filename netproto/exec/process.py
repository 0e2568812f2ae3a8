"""The bridge between one running command and the client's frames: a thin ProcessProtocol.

:class:`CommandProtocol` turns what a process transport reports into exec
frames (PROTOCOL.md section 3): ``K {"pid"}`` when it starts, ``1``/``2`` as
output arrives, ``X`` once the process has exited *and* both output pipes are
closed (``processEnded``). It is also the streaming producer registered on
the client's connection, so a client that reads slowly pauses the command's
output (and with it the command). It owns the command's timeout.

What may run, and the process group, are elsewhere
(:mod:`netproto.exec.policy`, :mod:`netproto.exec.transport`): this class only
moves data, so it is tested by calling ``outReceived`` and ``processEnded``
directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.exec.spawn import signalName

#: The frame type of each output descriptor.
_KINDS: dict[int, bytes] = {1: b"1", 2: b"2"}


class FrameSink(Protocol):
    """Where a command's frames go: the exec connection."""

    def sendFrame(self, kind: bytes, payload: bytes = b"") -> None: ...

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None: ...

    def commandEnded(self, command: CommandProtocol) -> None: ...


def exitFields(reason: Failure, timedOut: bool) -> dict[str, Any]:
    """The ``X`` payload for how a process ended."""
    value = reason.value
    code: int | None = None
    sig: str | None = None
    if isinstance(value, ProcessDone):
        code = 0
    elif isinstance(value, ProcessTerminated):
        if value.signal is not None:
            sig = signalName(value.signal)
        else:
            code = value.exitCode
    return {"code": code, "signal": sig, "timed_out": timedOut}


def exitPayload(fields: Mapping[str, Any]) -> bytes:
    """:func:`exitFields` as compact JSON, without the ``json`` module's
    per-call set-up (the X frame of every command)."""
    code, sig = fields["code"], fields["signal"]
    return b'{"code":%s,"signal":%s,"timed_out":%s}' % (
        b"null" if code is None else b"%d" % code,
        b"null" if sig is None else json.dumps(sig).encode(),
        b"true" if fields["timed_out"] else b"false",
    )


@implementer(IPushProducer)
class CommandProtocol(ProcessProtocol):
    """One command's output to frames; see the module docstring.

    :param sink: the connection the frames go to.
    :param clock: an ``IReactorTime`` for the timeout.
    :param timeout: seconds the command may run; ``None`` for no limit.
    :param maxPayload: the largest frame payload the client accepts
        (its hello's ``max_frame`` - 1); longer output chunks are split.
    """

    def __init__(self, sink: FrameSink, clock: Any, timeout: float | None, maxPayload: int) -> None:
        self.sink = sink
        self.clock = clock
        self.timeout = timeout
        self.maxPayload = maxPayload
        self.timedOut = False
        self.exitFields: dict[str, Any] | None = None
        self._timer: IDelayedCall | None = None
        self._producer: IPushProducer | None = None

    # -- ProcessProtocol -------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        # Twisted's own process transports are push producers too.
        self._producer = IPushProducer(self.transport, None)
        self.sink.sendFrame(b"K", b'{"pid":%d}' % self.transport.pid)
        if self.timeout is not None:
            self._timer = self.clock.callLater(self.timeout, self._timeoutPassed)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Output of fd 1 or 2 as ``1`` or ``2`` frames, without the
        ``outReceived``/``errReceived`` hop (every chunk and keystroke echo
        passes here)."""
        if len(data) <= self.maxPayload:
            self.sink.sendFrame(_KINDS[childFD], data)
        else:
            self._send(_KINDS[childFD], data)

    def outReceived(self, data: bytes) -> None:
        self.childDataReceived(1, data)

    def errReceived(self, data: bytes) -> None:
        self.childDataReceived(2, data)

    def _send(self, kind: bytes, data: bytes) -> None:
        """``data`` as ``kind`` frames of at most :attr:`maxPayload` bytes each."""
        limit = self.maxPayload
        with memoryview(data) as view:
            for start in range(0, len(data), limit):
                self.sink.sendFrame(kind, bytes(view[start : start + limit]))

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.exitFields = exitFields(reason, self.timedOut)
        self.sink.sendFrame(b"X", exitPayload(self.exitFields))
        self.sink.commandEnded(self)

    # -- requests from the client ---------------------------------------------

    def _timeoutPassed(self) -> None:
        self._timer = None
        self.timedOut = True
        self.terminate()

    def signal(self, name: str) -> bool:
        """The client's ``S``: signal the command's process group; whether it was
        sent. Not once the group is gone, nor once it is empty with its first
        process reaped: its id may be another group's by then (``docs/exec.md``)."""
        if self.transport is None or self.exitFields is not None:
            return False
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            return False
        return True

    def terminate(self) -> None:
        """End the command's whole process tree (TERM, then KILL after a grace period)."""
        if self.transport is not None:
            self.transport.loseConnection()

    # -- IPushProducer, for the client's connection ----------------------------

    def pauseProducing(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """The client's connection is gone: so must the command be."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.terminate()
