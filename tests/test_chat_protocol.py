"""The chat wire adapter on StringTransport and a fake clock: framing, telnet, limits, caps."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from netproto.chat.protocol import ChatProtocol
from netproto.chat.server import Refusal, makeFactory
from netproto.chat.telnet import DO, DONT, IAC, SB, SE, WILL, WONT, TelnetFilter
from netproto.directsend import PAUSE_THRESHOLD
from tests.chatkit import Harness
from tests.support import makeContext


def test_lf_and_crlf_input_both_work_and_output_is_crlf() -> None:
    """netcat's LF and telnet's CRLF both end a line; what the server sends ends in CRLF."""
    h = Harness()
    a, ta = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"from nc\nfrom telnet\r\nsplit ")
    a.dataReceived(b"line\r")
    a.dataReceived(b"\n")
    h.clock.advance(0)
    assert tb.value() == b"<guest1> from nc\r\n<guest1> from telnet\r\n<guest1> split line\r\n"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    """Invalid UTF-8 becomes U+FFFD; the connection goes on."""
    h = Harness()
    a, _ = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"caf\xe9 \xc3\xa9\n")
    assert h.lines(tb) == ["<guest1> caf\ufffd é".encode()]


def test_telnet_sequences_are_removed_and_option_offers_refused() -> None:
    """IAC commands never reach others; WILL gets DONT, DO gets WONT, WONT/DONT get nothing."""
    h = Harness()
    a, ta = h.connect()
    b, tb = h.connect()
    seq = bytes([IAC, WILL, 24, IAC, DO, 1, IAC, WONT, 3, IAC, DONT, 5, IAC, 244])
    sub = bytes([IAC, SB, 24, 0]) + b"xterm" + bytes([IAC, SE])
    a.dataReceived(b"he" + seq + b"llo" + sub + b"\r\n")
    assert h.lines(tb) == [b"<guest1> hello"]
    assert ta.value() == bytes([IAC, DONT, 24, IAC, WONT, 1])


def test_telnet_sequences_split_across_reads_are_still_removed() -> None:
    """The filter keeps its state between reads, one byte at a time."""
    h = Harness()
    a, ta = h.connect()
    b, tb = h.connect()
    data = b"ab" + bytes([IAC, SB, 31, 0, 80, IAC, IAC, 0, 24, IAC, SE, IAC, IAC]) + b"cd\r\n"
    for i in range(len(data)):
        a.dataReceived(data[i : i + 1])
    assert h.lines(tb) == [b"<guest1> abcd"]


def test_telnet_filter_gives_up_on_a_runaway_subnegotiation() -> None:
    """A stray IAC SB cannot swallow the rest of a connection."""
    f = TelnetFilter()
    out, _ = f.feed(bytes([IAC, SB]) + b"x" * 2000 + b"\nhello\n")
    assert out.endswith(b"\nhello\n")


def test_over_long_line_gets_an_error_and_the_connection_stays_usable() -> None:
    """A line past --chat-max-line: ``! line too long``, its rest skipped, the next line works."""
    h = Harness(maxLine=10)
    a, ta = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"x" * 10 + b"\r\n")  # exactly the limit, CR not counted
    a.dataReceived(b"y" * 11 + b"\nafter one\n")
    h.clock.advance(0)
    a.dataReceived(b"z" * 30)
    a.dataReceived(b"z" * 30)
    a.dataReceived(b"zz\nafter two\n")
    a.dataReceived(b"w" * 11 + b"\r\n")
    assert h.lines(tb) == [b"<guest1> " + b"x" * 10, b"<guest1> after one", b"<guest1> after two"]
    assert h.lines(ta) == [b"! line too long (limit 10 bytes)"] * 3
    assert not ta.disconnecting


def test_flood_control_drops_excess_lines_with_one_slow_down() -> None:
    """A burst of 40 passes; the rest is dropped with one ``! slow down``; the rate refills."""
    h = Harness(rate=20, burst=40)
    a, ta = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"".join(b"m%d\n" % i for i in range(50)))
    got = h.lines(tb)
    assert got == [b"<guest1> m%d" % i for i in range(40)]
    assert h.lines(ta) == [b"! slow down"]
    h.clock.advance(0.5)  # 10 more lines' worth
    a.dataReceived(b"".join(b"n%d\n" % i for i in range(12)))
    assert h.lines(tb) == [b"<guest1> n%d" % i for i in range(10)]
    assert h.lines(ta) == [b"! slow down"]


def test_flood_control_off_with_rate_zero() -> None:
    """``--chat-rate 0`` lets every line through."""
    h = Harness(rate=0)
    a, _ = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"x\n" * 500)
    assert len(h.lines(tb)) == 500


def test_a_client_that_stops_reading_is_cut_off_without_slowing_others() -> None:
    """Once the transport says its buffer is full, output past --chat-max-queue aborts that
    client alone; the others go on getting everything."""
    h = Harness(maxQueue=PAUSE_THRESHOLD + 1000, rate=0)
    a, ta = h.connect()
    slow, ts = h.connect()
    c, tc = h.connect()
    ta.clear()
    writer = slow.sender
    assert ts.producer is writer and ts.streaming
    assert writer is not None
    writer.pauseProducing()  # what the TCP transport does when its buffer passes 64 KiB
    for i in range(30):
        a.dataReceived(b"line %02d ".ljust(60, b"x") % i + b"\n")
        h.clock.advance(0)
    assert ts.disconnected  # abortConnection
    assert len(h.lines(tc)) == 30
    slow.connectionLost(Failure(ConnectionLost()))
    assert h.lines(tc) == [b"*** guest2 has quit (too slow reading)"]
    assert h.factory.clients == 2


def test_a_reader_that_catches_up_is_not_cut_off() -> None:
    """``resumeProducing`` (the buffer drained) resets the count."""
    h = Harness(maxQueue=PAUSE_THRESHOLD + 1000, rate=0)
    a, _ = h.connect()
    b, tb = h.connect()
    writer = b.sender
    assert tb.producer is writer
    assert writer is not None
    for _ in range(5):
        writer.pauseProducing()
        a.dataReceived(b"y" * 500 + b"\n")
        h.clock.advance(0)
        writer.resumeProducing()
    assert not tb.disconnected and len(h.lines(tb)) == 5


def test_quit_closes_after_the_notice_and_ignores_what_follows() -> None:
    """``/quit`` tells the room, then closes; lines after it in the same read are not acted on."""
    h = Harness()
    a, ta = h.connect()
    b, tb = h.connect()
    a.dataReceived(b"/quit see you\nignored\n")
    assert h.lines(tb) == [b"*** guest1 has quit (see you)"]
    assert ta.disconnecting and ta.producer is None
    a.connectionLost(Failure(ConnectionDone()))
    assert h.lines(tb) == []


def test_idle_clients_are_disconnected_after_the_timeout() -> None:
    """With --chat-idle-timeout a silent client is told, its room hears why, and it is closed;
    a talking client stays."""
    h = Harness(idleTimeout=60)
    quiet, tq = h.connect()
    talker, tt = h.connect()
    for _ in range(8):
        h.clock.advance(10)
        talker.dataReceived(b"still here\n")
    assert h.lines(tq)[-1] == b"! idle for 60 s; disconnecting"
    assert tq.disconnecting and not tt.disconnecting
    assert h.lines(tt)[-1] == b"*** guest1 has quit (idle timeout)"
    h.factory.stopFactory()
    h.clock.advance(0)
    assert not h.timers()


def test_no_idle_sweep_when_the_timeout_is_off() -> None:
    """The default (0) schedules nothing."""
    h = Harness()
    h.connect()
    assert not h.timers()


def test_connection_caps_refuse_with_server_full() -> None:
    """Past the per-address or total cap: ``! server full`` and a close; leaving frees a slot."""
    h = Harness(maxPerAddress=2, maxClients=3)
    a, _ = h.connect("127.0.0.2")
    h.connect("127.0.0.2")
    refused = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1))
    assert isinstance(refused, Refusal)
    t = StringTransport()
    refused.makeConnection(t)
    assert t.value() == b"! server full\r\n" and t.disconnecting
    h.connect("127.0.0.3")
    assert isinstance(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.4", 1)), Refusal)
    a.connectionLost(Failure(ConnectionDone()))
    assert isinstance(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)), ChatProtocol)
    assert h.factory.perAddress == {"127.0.0.2": 2, "127.0.0.3": 1}


def test_unix_socket_clients_are_not_counted_per_address() -> None:
    """UNIX-socket peers have no address to count; only the total cap applies."""
    h = Harness(maxPerAddress=1)
    for _ in range(3):
        assert isinstance(h.factory.buildProtocol(UNIXAddress(None)), ChatProtocol)
    assert h.factory.perAddress == {}


def test_make_factory_reads_the_chat_options(tmp_path: Any) -> None:
    """``--chat-*`` options arrive in the factory's config."""
    ctx = makeContext(tmp_path, options={"chat-history": 5, "chat-rate": 2.0, "chat-burst": 3})
    factory = makeFactory(ctx)
    assert factory.config.history == 5
    assert factory.lineInterval == 0.5 and factory.burstTolerance == 1.25


@pytest.mark.parametrize("value", ["-1", "x"])
def test_plugin_options_reject_bad_values(value: str) -> None:
    """The coerce functions refuse negative or non-numeric values (twistd prints a usage error)."""
    from netproto.chat.plugin import service

    for option in service.optParameters:
        with pytest.raises(ValueError, match=value):
            option[4](value)
