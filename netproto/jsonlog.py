"""``twistd netproto --log-format json``: one JSON object a line, for log shippers.

Each line is twisted.logger's own JSON form of an event (``eventAsJSON``: its
time, level, namespace, format and every field, the peer included) with three
additions a shipper needs without knowing Twisted:

* ``service``: on every event of a connection, and of a service (for events
  that do not carry one, it is named from the logger's namespace,
  ``netproto.NAME...``);
* ``level``: the level's name (``info``, ``warn``, ...);
* ``text``: the line the text log would show.

Whatever a client sends, a record stays one line: JSON escapes control
characters, and non-ASCII ones, U+2028 included; and no string field is longer than
:data:`MAX_FIELD` characters (cut there, with the count of what was cut).

The observer replaces twistd's text one the way a ``.tac`` file does, as the
application's ``ILogObserver`` component (:class:`JSONLogged`), and writes
where twistd would have: ``--logfile FILE`` (rotated at 1,000,000 bytes, as
twistd does), or standard output with ``--logfile=-`` or ``--nodaemon``.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from typing import IO, Any, Final

from twisted.application.service import IServiceCollection, MultiService
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    jsonFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from zope.interface import provider

#: The values of ``--log-format``.
LOG_FORMATS: Final = ("text", "json")

#: Longest string field kept whole, in characters: a backstop, so that no
#: record is unbounded. What a client can put in a logged field is already
#: bounded by the services (an upload name 4,095 bytes, anything before login
#: 4 KiB, a command line 200 characters); exec's batch of 100 started commands,
#: about 22,000 characters at most, stays whole: the audit trail is never cut.
MAX_FIELD: Final = 32 * 1024

#: Keys dropped from the copy: Python objects that JSON cannot carry (the
#: logger and the object that logged), written as ``{"unpersistable": true}``.
_OBJECTS: Final = ("log_logger", "log_source")


def logFormat(text: str) -> str:
    """``text`` or ``json``."""
    if text not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text


logFormat.coerceDoc = "Must be text or json."  # type: ignore[attr-defined]


def cut(text: str, limit: int = MAX_FIELD) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def serviceOf(namespace: object, services: Collection[str]) -> str | None:
    """The service a logger's namespace belongs to: ``netproto.chat.protocol.X`` is chat."""
    if not isinstance(namespace, str):
        return None
    parts = namespace.split(".", 2)
    if len(parts) > 1 and parts[0] == "netproto" and parts[1] in services:
        return parts[1]
    return None


def prepared(event: LogEvent, services: Collection[str]) -> dict[str, Any]:
    """A copy of ``event`` for the JSON log (the original goes on to other observers)."""
    # The text first: a person reading the raw line (or a grep) meets it first.
    record: dict[str, Any] = {"text": cut(formatEvent(event))}
    level = event.get("log_level")
    if level is not None:
        record["level"] = level.name
    if "service" not in event:
        service = serviceOf(event.get("log_namespace"), services)
        if service is not None:
            record["service"] = service
    for key, value in event.items():
        if key not in _OBJECTS:
            record[key] = cut(value) if isinstance(value, str) else value
    return record


def jsonLogObserver(outFile: IO[Any], services: Collection[str]) -> ILogObserver:
    """Write each event as one JSON line to ``outFile``."""
    write = jsonFileLogObserver(outFile, recordSeparator="")

    # provider, not implementer: twistd wraps an observer it does not see
    # providing ILogObserver in its legacy bridge, which replaces a field named
    # "message" (a refusal's) with ().
    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        write(prepared(event, services))

    return observe  # type: ignore[no-any-return]


def destination(twistdOptions: Mapping[str, Any] | None) -> IO[Any]:
    """Where twistd would write its text log, given its own options."""
    if twistdOptions is None:
        return sys.stdout
    logfile = twistdOptions.get("logfile")
    if logfile == "-" or (not logfile and twistdOptions.get("nodaemon")):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")  # type: ignore[no-any-return]


def checkTwistdOptions(twistdOptions: Mapping[str, Any] | None) -> None:
    """Refuse what cannot go with ``--log-format json``: twistd options that pick another
    observer. Raises ``ValueError`` with the reason."""
    if twistdOptions is None:
        return
    if twistdOptions.get("syslog"):
        raise ValueError("--log-format json writes to --logfile or standard output, not syslog")
    if twistdOptions.get("logger"):
        raise ValueError("--log-format json and twistd's --logger both choose the log observer")


class JSONLogged(MultiService):
    """A service tree that, set under twistd's application, makes the JSON
    observer the application's ``ILogObserver``: what twistd logs to once the
    application is built (instead of its text observer)."""

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def jsonLogged(
    top: MultiService, twistdOptions: Mapping[str, Any] | None, services: Collection[str]
) -> JSONLogged:
    """``top`` under a :class:`JSONLogged` writing where twistd would have."""
    tree = JSONLogged(jsonLogObserver(destination(twistdOptions), frozenset(services)))
    top.setServiceParent(tree)
    return tree


__all__ = ["LOG_FORMATS", "MAX_FIELD", "JSONLogged", "jsonLogObserver", "jsonLogged", "prepared"]
