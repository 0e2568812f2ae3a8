"""Suite-wide rules: a test fails if anything logged an error or a failure (as trial does)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

# Every subprocess a test starts (twistd, the netproto client) imports netproto from
# this checkout, not from the copy `pip install .` put in the virtualenv earlier: the
# two differ while someone works on the code, and are the same in CI.
CHECKOUT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

# Hypothesis checks correctness here, never speed: on a loaded 2-core CI machine an
# example may take seconds, so no per-example deadline and no "too slow" health check.
settings.register_profile(
    "netproto", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("netproto")


@pytest.fixture(autouse=True)
def failOnLoggedErrors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collect error-level log events; a test that expects some clears the list it gets
    from the ``loggedErrors`` fixture after checking them."""
    errors: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or "log_failure" in event:
            errors.append(event)

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    try:
        yield errors
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observer))
    if errors:
        texts = []
        for event in errors:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            texts.append(text)
        pytest.fail("errors were logged during the test:\n" + "\n".join(texts))


@pytest.fixture
def loggedErrors(failOnLoggedErrors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The error events logged so far; clear it once a test has checked the expected ones."""
    return failOnLoggedErrors
