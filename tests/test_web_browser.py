"""The chat page in a real browser: Debian's headless chromium driven by Selenium,
against a real ``twistd netproto`` serving chat and web (PROTOCOL.md section 7).

One browser for the module (two windows are two browser members: each tab has its
own page and session); each test starts from fresh windows. With
``NETPROTO_SCREENSHOT=1`` the conversation test also saves the page's picture as
``docs/_static/web-chat.png`` (for docs/web.md; not on every run, so the committed
picture changes only when asked).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Twistd, runTwistd
from tests.webkit import (
    LineMember,
    chromium,
    logLines,
    shownNick,
    typeLine,
    waitFor,
    waitLine,
    welcomedAs,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "_static" / "web-chat.png"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twistd]:
    with runTwistd(tmp_path_factory.mktemp("web"), services=("chat", "web")) as twistd:
        yield twistd


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser for one test: each page it opens is a new window (a new session),
    closed afterwards; the first window stays blank."""
    first = browser.current_window_handle
    yield browser
    for handle in browser.window_handles:
        if handle != first:
            browser.switch_to.window(handle)
            browser.close()
    browser.switch_to.window(first)
    browser.set_window_size(1000, 700)


def openPage(driver: Any, port: int) -> str:
    """Open the chat page in a new window; its window handle, once welcomed."""
    driver.switch_to.new_window("window")
    driver.get(f"http://127.0.0.1:{port}/")
    waitFor(driver, lambda d: shownNick(d).startswith("guest"))
    handle: str = driver.current_window_handle
    return handle


def rename(driver: Any, nick: str) -> None:
    typeLine(driver, f"/nick {nick}")
    waitFor(driver, lambda d: shownNick(d) == nick)


def box(driver: Any, selector: str) -> list[float]:
    """The element's left, top, right and bottom on the page."""
    edges: list[float] = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom];",
        selector,
    )
    return edges


def shown(driver: Any, selector: str) -> list[str]:
    texts: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent);",
        selector,
    )
    return texts


def test_two_browsers_and_a_telnet_member_talk_in_the_same_rooms(page: Any, server: Twistd) -> None:
    """Two pages and telnet exchange messages both ways; /nick, /me, /msg and /join typed
    in the page do what they do on telnet; each form is shown styled apart."""
    port = server.port("web")
    tel = LineMember(server.port("chat"))
    try:
        assert welcomedAs(tel.readUntil("Welcome")).startswith("guest")
        tel.send("/nick tel")
        alice = openPage(page, port)
        rename(page, "alice")
        bob = openPage(page, port)
        rename(page, "bob")
        tel.readUntil(r"is now known as bob")
        waitFor(page, lambda d: {"alice", "bob", "tel"} <= set(shown(d, "#members li")))

        tel.send("hello browsers")
        for handle in (alice, bob):
            page.switch_to.window(handle)
            waitLine(page, "<tel> hello browsers")
        typeLine(page, "hi from bob")
        assert tel.readUntil("hi from bob")[-1] == "<bob> hi from bob"
        page.switch_to.window(alice)
        waitLine(page, "<bob> hi from bob")
        typeLine(page, "/me waves")
        assert tel.readUntil("waves")[-1] == "* alice waves"
        typeLine(page, "/msg tel psst")
        assert tel.readUntil("psst")[-1] == "*alice* psst"
        tel.send("/msg alice back at you")
        waitLine(page, "*tel* back at you")
        typeLine(page, "/nick")  # a mistake: the section-1 error, shown as one
        waitLine(page, "! usage: /nick NAME")
        kinds = dict(
            zip(
                shown(page, "#log li"),
                page.execute_script(
                    "return Array.from(document.querySelectorAll('#log li'), e => e.className);"
                ),
                strict=True,
            )
        )
        assert kinds["<tel> hello browsers"] == "msg"
        assert kinds["* alice waves"] == "action own"
        assert kinds["*tel* back at you"] == "private"
        assert kinds["! usage: /nick NAME"] == "error"
        if os.environ.get("NETPROTO_SCREENSHOT"):
            page.set_window_size(900, 560)
            page.save_screenshot(str(SCREENSHOT))

        typeLine(page, "/join #garden")
        waitFor(page, lambda d: d.find_element("id", "room").text == "#garden")
        tel.readUntil(r"alice has left #lobby")
        page.switch_to.window(bob)
        waitLine(page, "alice has left #lobby")
    finally:
        tel.close()


def test_history_is_shown_on_join(page: Any, server: Twistd) -> None:
    """A page that joins a room shows the room's history, marked as such."""
    tel = LineMember(server.port("chat"))
    try:
        tel.readUntil("Welcome")
        tel.send("/join #archive")
        tel.readUntil("has joined #archive")
        tel.send("said before you came")
        openPage(page, server.port("web"))
        typeLine(page, "/join archive")
        lines = waitLine(page, "said before you came")
        assert any(line.endswith("> said before you came") for line in lines)
        kinds = page.execute_script(
            "return Array.from(document.querySelectorAll('#log li.history'), e => e.textContent);"
        )
        assert any("said before you came" in k for k in kinds)
    finally:
        tel.close()


def test_hostile_text_is_shown_as_text(page: Any, server: Twistd) -> None:
    """Markup in a message, a /me, a private message and a refused nick is shown as
    typed: no element is made of it, no script runs."""
    tel = LineMember(server.port("chat"))
    try:
        tel.readUntil("Welcome")
        openPage(page, server.port("web"))
        tel.send("/nick mallory")
        evil = (
            '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
        )
        tel.send(evil)
        tel.send("/me <b>bold</b> &amp; <i>it</i>")
        tel.send("/nick <script>")
        nick = shownNick(page)
        tel.send(f"/msg {nick} <a href=javascript:alert(1)>click</a>")
        waitLine(page, "<mallory> " + evil)
        waitLine(page, "* mallory <b>bold</b> &amp; <i>it</i>")
        waitLine(page, "*mallory* <a href=javascript:alert(1)>click</a>")
        assert page.title == "netproto chat"
        made = page.execute_script(
            "return document.querySelectorAll('#log img, #log script, #log b, #log i, #log a')"
            ".length;"
        )
        assert made == 0
        assert tel.readUntil(r"^! invalid nick")[-1].startswith("! invalid nick: <script>")
    finally:
        tel.close()


def test_the_page_reconnects_after_the_server_restarts(page: Any, tmp_path: Path) -> None:
    """The server stops and starts again on the same port: the page says it is
    disconnected, reconnects by itself, and takes back its nick and room."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web = ("--web", f"tcp:{port}:interface=127.0.0.1")
    with runTwistd(tmp_path, *web, services=("chat",)):
        openPage(page, port)
        rename(page, "phoenix")
        typeLine(page, "/join #ashes")
        waitFor(page, lambda d: d.find_element("id", "room").text == "#ashes")
    waitFor(page, lambda d: d.find_element("id", "status").get_attribute("class") == "down")
    with runTwistd(tmp_path, *web, services=("chat",)) as again:
        waitFor(page, lambda d: d.find_element("id", "status").text == "connected", 40)
        waitFor(page, lambda d: shownNick(d) == "phoenix")
        waitFor(page, lambda d: d.find_element("id", "room").text == "#ashes")
        tel = LineMember(again.port("chat"))
        try:
            tel.readUntil("Welcome")
            tel.send("/join ashes")
            tel.send("you are back")
            waitLine(page, "you are back")
        finally:
            tel.close()
    assert "*** disconnected" in logLines(page)


def test_the_page_fits_a_phone_and_works_from_the_keyboard(page: Any, server: Twistd) -> None:
    """At a phone's width the side panel goes under the messages and nothing is wider
    than the screen; Tab reaches the nick form from the message box, and Enter there
    changes the nick, with no mouse."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    openPage(page, server.port("web"))
    page.set_window_size(390, 800)
    waitFor(page, lambda d: box(d, "#side")[1] >= box(d, "#talk")[3] - 1)
    width = page.execute_script("return document.documentElement.clientWidth;")
    assert page.execute_script("return document.documentElement.scrollWidth;") <= width
    assert box(page, "#input")[2] <= width
    assert page.switch_to.active_element.get_attribute("id") == "input"  # autofocus
    keys = ActionChains(page)
    for _ in range(2):  # past the Send button, to the nick field
        keys.send_keys(Keys.TAB)
    keys.perform()
    assert page.switch_to.active_element.get_attribute("id") == "nick-input"
    ActionChains(page).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(
        "thumbs", Keys.ENTER
    ).perform()
    waitFor(page, lambda d: shownNick(d) == "thumbs")
    assert page.switch_to.active_element.get_attribute("id") == "input"
