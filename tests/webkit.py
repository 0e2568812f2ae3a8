"""Helpers of the web service's tests: a blocking WebSocket member (websocket-client),
a blocking telnet-style member, and headless chromium driven by Selenium.

The browser is Debian's: ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``.ci/run`` installs both); nothing is ever downloaded. Without them a test
fails, saying what to install.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

from tests.programs import required

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Seconds any wait of these helpers may take before the test fails.
DEADLINE = 20.0


def origin(port: int) -> str:
    """The page's own origin, as a browser on ``http://127.0.0.1:PORT/`` sends it."""
    return f"http://127.0.0.1:{port}"


def connectSocket(port: int, origin: str | None = "", **options: Any) -> websocket.WebSocket:
    """A WebSocket to ``/chat``; ``origin`` "" is the page's own, None sends none."""
    if origin == "":
        origin = f"http://127.0.0.1:{port}"
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}/chat",
        origin=origin,
        suppress_origin=origin is None,
        timeout=DEADLINE,
        enable_multithread=False,
        **options,
    )


class RawSocketMember:
    """A WebSocket member on a plain socket, for a test's own select loop: the
    handshake is blocking, then :meth:`feed` takes what was read and returns the
    text messages completed (server frames are never masked)."""

    def __init__(self, port: int, *extra: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.sock.sendall(upgradeRequest(port, origin(port), *extra))
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = self.sock.recv(4096)
            assert data, f"closed during the handshake: {reply!r}"
            reply += data
        head, self.buf = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.head = head.decode()

    def receiveUntil(self, pattern: str, timeout: float = DEADLINE) -> list[str]:
        """Text messages up to and including the first that matches ``pattern``."""
        got: list[str] = self.feed(b"")
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, m) for m in got):
            left = deadline - time.monotonic()
            assert left > 0, f"no message matching {pattern!r}; got {got!r}"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            assert data, f"closed before {pattern!r}; got {got!r}"
            got += self.feed(data)
        return got

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        messages: list[str] = []
        buf = self.buf
        while len(buf) >= 2:
            opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + length:
                break
            assert buf[0] & 0xF0 == 0x80, "fragmented or compressed server frame"
            assert not buf[1] & 0x80, "masked server frame"
            if opcode == 1:
                messages.append(buf[at : at + length].decode())
            buf = buf[at + length :]
        self.buf = buf
        return messages


def upgradeRequest(port: int, origin: str | None, *extra: str) -> bytes:
    """A WebSocket opening handshake for ``/chat``, from ``origin`` (None: no Origin),
    with the ``extra`` header lines."""
    head = [
        "GET /chat HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        head.append(f"Origin: {origin}")
    head.extend(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def handshakeStatus(port: int, origin: str | None) -> int:
    """The HTTP status the server answers a WebSocket handshake from ``origin`` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(upgradeRequest(port, origin))
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1])


def receiveUntil(ws: websocket.WebSocket, pattern: str, timeout: float = DEADLINE) -> list[str]:
    """Text messages up to and including the first that matches ``pattern``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no message matching {pattern!r}; got {got!r}")
        ws.settimeout(left)
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise AssertionError(f"closed before {pattern!r}: {data!r}; got {got!r}")
        text = data.decode("utf-8")
        got.append(text)
        if re.search(pattern, text):
            return got


def closeCode(ws: websocket.WebSocket, timeout: float = DEADLINE) -> int | None:
    """Read until the server closes: its close frame's status code, or None when it
    dropped the connection without one. Fails if it is still open after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(deadline - time.monotonic())
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except (ConnectionError, websocket.WebSocketConnectionClosedException):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")
    raise AssertionError("the server did not close the WebSocket")


class LineMember:
    """A blocking telnet-style chat member (PROTOCOL.md section 1)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def readUntil(self, pattern: str, timeout: float = DEADLINE) -> list[str]:
        """Lines up to and including the first that matches ``pattern``."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                got.append(line.decode())
                if re.search(pattern, got[-1]):
                    return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; got {got!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"closed before {pattern!r}; got {got!r}")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


def welcomedAs(lines: list[str]) -> str:
    """The guest nick the welcome line among ``lines`` names."""
    for line in lines:
        m = re.search(r"You are (\S+) in #", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no welcome in {lines!r}")


# -- the browser ----------------------------------------------------------------------


def needBrowser() -> None:
    """Fail the test when Debian's chromium or its driver is missing."""
    required(CHROMIUM, "chromium")
    required(CHROMEDRIVER, "chromium-driver")


@contextmanager
def chromium(tmp: Path) -> Iterator[Any]:
    """Headless chromium under Selenium, its profile in ``tmp``; quit on exit."""
    needBrowser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1000,700",
        f"--user-data-dir={tmp / 'profile'}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(DEADLINE)
    try:
        yield driver
    finally:
        driver.quit()


def waitFor(driver: Any, condition: Callable[[Any], Any], timeout: float = DEADLINE) -> Any:
    """``condition(driver)`` once it is true; the test fails after ``timeout``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def logLines(driver: Any) -> list[str]:
    """The text of every line shown in the page's message log."""
    lines: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#log li'), li => li.textContent);"
    )
    return lines


def waitLine(driver: Any, text: str, timeout: float = DEADLINE) -> list[str]:
    """Wait until a line of the page's log contains ``text``; the log then."""
    found: list[str] = []

    def shown(d: Any) -> bool:
        found[:] = logLines(d)
        return any(text in line for line in found)

    try:
        waitFor(driver, shown, timeout)
    except Exception as e:
        raise AssertionError(f"the page never showed {text!r}; it shows {found!r}") from e
    return found


def typeLine(driver: Any, line: str) -> None:
    """Type ``line`` in the page's box and press Enter, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "input")
    box.send_keys(line + Keys.ENTER)


def shownNick(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    text: str = driver.find_element(By.ID, "nick").text
    return text
