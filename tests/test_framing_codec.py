"""The sans-IO codec: what a client needs to speak the framed protocol, without Twisted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netproto.codec import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    Hello,
    encodeFrame,
    frameHeader,
)
from netproto.errors import ProtocolError


def test_codec_imports_no_twisted() -> None:
    """The codec is usable where Twisted is not: importing it loads no Twisted module."""
    code = (
        "import sys, netproto.codec\n"
        "print(sorted(m for m in sys.modules if m.startswith('twisted')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_frame_header_before_its_payload_is_the_frame() -> None:
    """A payload sent after :func:`frameHeader` makes the same bytes as :func:`encodeFrame`."""
    payload = b"x" * 5000
    assert frameHeader(b"D", len(payload)) + payload == encodeFrame(b"D", payload)


def test_hello_round_trips_through_the_decoder() -> None:
    """A hello built by a server reads back the same on the client, field by field,
    and its payload keeps PROTOCOL.md's field order."""
    hello = Hello("upload", ("token",), 1000, features=("list", "get"), extra={"motd": "hi"})
    payload = hello.encode()
    assert payload.startswith(b'{"service":"upload","protocol":1,"server":"netproto/')
    decoder = FrameDecoder(maxFrame=4096)
    decoder.feed(encodeFrame(b"H", payload))
    frame = decoder.next()
    assert frame is not None and frame[0] == b"H"
    assert Hello.decode(frame[1]) == hello


def test_hello_defaults_apply_to_missing_fields() -> None:
    """A hello without ``max_frame`` means the default limit (an older server)."""
    hello = Hello.decode(b'{"service":"exec","auth":["password"]}')
    assert (hello.service, hello.auth, hello.maxFrame) == ("exec", ("password",), DEFAULT_MAX_FRAME)
    assert hello.features == ()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"auth":["token"]}',
        b'{"service":"exec","auth":"token"}',
        b'{"service":"exec","auth":[1]}',
        b'{"service":"exec","auth":["token"],"features":"pty"}',
        b'{"service":"exec","auth":["token"],"features":[1]}',
        b'{"service":"exec","auth":[],"max_frame":0}',
        b'{"service":"exec","auth":[],"max_frame":true}',
        b'{"service":"exec","auth":[],"protocol":"1"}',
        b"[]",
    ],
)
def test_a_malformed_hello_is_bad_frame(payload: bytes) -> None:
    """A hello with a field of the wrong type is ``bad-frame``, not a crash later."""
    with pytest.raises(ProtocolError) as caught:
        Hello.decode(payload)
    assert caught.value.code == "bad-frame"
