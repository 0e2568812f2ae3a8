"""Programs the tests run, from the Debian packages ``.ci/run`` installs.

One that is missing fails the test that needs it, naming the package: CI
installs them all, so a skip there would only hide a CI that lost one.
"""

from __future__ import annotations

import os
import shutil

import pytest


def required(program: str, package: str) -> str:
    """The path of ``program`` (a name looked up in ``PATH``, or a path); the
    calling test fails where it is not installed."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(
            f"{program} not found: install the Debian package {package} "
            f"(apt-get install {package}, as .ci/run does)",
            pytrace=False,
        )
    return path


def requireRoot() -> None:
    """Fail the calling test unless it runs as root (CI runs the suite as root)."""
    if os.getuid() != 0:
        pytest.fail(
            "the privilege-drop tests need root: run the suite as root, as .ci/run does",
            pytrace=False,
        )
