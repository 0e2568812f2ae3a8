"""What CI installs and runs as is required, never optional: a test whose program
is missing, or that needs root and is not, fails saying what to install or how
to run it. A skip would have let a CI that lost a package pass unnoticed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import rediskit, webkit
from tests.programs import required, requireRoot


@pytest.fixture
def nothingInstalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every program looked up is missing; ``CI`` unset, as on a developer's machine."""

    def which(cmd: Any, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.delenv("CI", raising=False)


def test_a_program_present_is_found_by_its_path() -> None:
    """``sh`` is everywhere: its path, with nothing failed."""
    found = required("sh", "dash")
    assert os.access(found, os.X_OK) and Path(found).name == "sh"


@pytest.mark.usefixtures("nothingInstalled")
def test_a_missing_program_fails_naming_its_debian_package() -> None:
    """The failure names the program, the Debian package that has it and .ci/run."""
    with pytest.raises(pytest.fail.Exception) as failed:
        required("promtool", "prometheus")
    message = str(failed.value)
    assert "promtool" in message and "prometheus" in message and ".ci/run" in message


@pytest.mark.usefixtures("nothingInstalled")
def test_cluster_tests_fail_without_redis_server(tmp_path: Path) -> None:
    """Starting a Redis for the cluster's tests fails, naming the package ``redis-server``."""
    redis = rediskit.Redis(tmp_path)
    try:
        with pytest.raises(pytest.fail.Exception, match="Debian package redis-server"):
            redis.start()
    finally:
        redis.stop()


@pytest.mark.usefixtures("nothingInstalled")
def test_browser_tests_fail_without_chromium() -> None:
    """Without chromium the browser's tests fail, outside CI too."""
    with pytest.raises(pytest.fail.Exception, match="chromium"):
        webkit.needBrowser()


@pytest.mark.usefixtures("nothingInstalled")
def test_telnet_tests_fail_without_telnet() -> None:
    """Without telnet the chat's end-to-end test with it fails, outside CI too."""
    with pytest.raises(pytest.fail.Exception, match="Debian package telnet"):
        required("telnet", "telnet")


def test_privilege_drop_tests_fail_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: the privilege-drop tests fail, saying they need root."""
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="privilege-drop tests need root"):
        requireRoot()
