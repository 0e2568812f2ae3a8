"""The chat line parser under Hypothesis: any bytes, split anywhere, give the same lines as
one feed, and no input raises (over StringTransport, in memory)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from netproto.chat.telnet import DO, IAC, SB, SE, WILL
from tests.chatkit import Harness

MAX_LINE = 16

#: Pieces that make the parser's cases likely: line ends in every form, lines at, below and
#: past the limit (with and without CR), telnet commands (whole, and cut in two by
#: concatenation with other pieces), UTF-8 cut anywhere, commands including /quit.
PIECES = st.one_of(
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\r",
            b"x" * MAX_LINE,
            b"y" * (MAX_LINE + 1),
            b"z" * (MAX_LINE + 2),
            bytes([IAC]),
            bytes([IAC, WILL, 24]),
            bytes([IAC, DO, 1]),
            bytes([IAC, SB, 24, 0]) + b"vt100" + bytes([IAC, SE]),
            bytes([IAC, IAC]),
            "é日".encode(),
            b"\xe6\x97",
            b"/who\n",
            b"/nick n\n",
            b"/me w\n",
            b"/quit\n",
            b"//x\n",
        ]
    ),
    st.binary(max_size=24),
)

# What the server answers telnet option offers with: not lines, and sent as the offers are
# read, so their place among the lines depends on where the input was split.
TELNET_REPLY = re.compile(rb"\xff[\xfb-\xfe].", re.DOTALL)


def run(chunks: list[bytes]) -> tuple[bytes, bytes, bool]:
    """Feed ``chunks`` to one member (as the network would: not after it closed); what it
    was sent (without telnet replies), what another member was sent, whether it closed."""
    h = Harness(maxLine=MAX_LINE)
    a, ta = h.connect()
    b, tb = h.connect()
    for chunk in chunks:
        if ta.disconnecting:
            break
        a.dataReceived(chunk)
    h.clock.advance(h.factory.config.noticeDelay)
    return TELNET_REPLY.sub(b"", ta.value()), tb.value(), ta.disconnecting


@given(st.lists(PIECES, max_size=30).map(b"".join), st.lists(st.integers(0, 10_000)))
def test_any_split_of_the_input_gives_the_lines_of_one_feed(data: bytes, cuts: list[int]) -> None:
    """Arbitrary input cut at arbitrary points gives the same lines (to the sender and to the
    room) as the same input in one read, and nothing raises."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts = [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]
    assert run(parts) == run([data])


@given(st.lists(PIECES, max_size=30).map(b"".join))
def test_one_byte_at_a_time_gives_the_lines_of_one_feed(data: bytes) -> None:
    """The worst split: every byte its own read."""
    assert run([data[i : i + 1] for i in range(len(data))]) == run([data])
