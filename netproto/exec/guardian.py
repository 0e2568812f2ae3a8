"""The guardian: a process that ends the server's commands once the server is gone.

Started by the exec service (see :mod:`netproto.exec.confine`) as
``python -m netproto.exec.guardian``, in a session of its own, its stdin the
read end of a pipe only the server can write to. It first ends what dead
servers left (their cgroup directories beside this server's, their registry
files in the same data directory), then waits for end of file on stdin: the
server has exited, however it exited. Then it ends what the server left
(``SIGTERM``, then ``SIGKILL`` after ``--grace`` seconds) and exits. After a
clean shutdown there is nothing left, and it exits at once.

It imports no Twisted: it starts fast and holds little.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from netproto.exec import registry as _registry
from netproto.exec.cgroups import endCgroups


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"netproto exec guardian ({os.getpid()}): {text}\n".encode())


def _endInstance(cgroups: str | None, registry: str | None, grace: float) -> int:
    """End what one server instance left; how many commands' processes were found."""
    found = 0
    if cgroups is not None:
        found += endCgroups(cgroups, grace)
    if registry is not None:
        found += _registry.endGroups(_registry.recorded(registry), grace)
        with contextlib.suppress(OSError):
            os.unlink(registry)
    return found


def _waitForEndOfFile(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except OSError as e:
            if e.errno != errno.EINTR:
                return


#: The guardian's options (all ``--NAME VALUE``; only the server writes them).
OPTIONS: Final = ("--grace", "--cgroups", "--cgroup-home", "--registry", "--registries")


def parseArguments(argv: Sequence[str]) -> dict[str, str]:
    """``--NAME VALUE`` pairs of :data:`OPTIONS` (no argparse: this process
    stays small); :class:`SystemExit` for anything else or a missing ``--grace``."""
    if len(argv) % 2 or not all(name in OPTIONS for name in argv[::2]):
        raise SystemExit(f"usage: python -m netproto.exec.guardian {' VALUE '.join(OPTIONS)} VALUE")
    options = dict(zip(argv[::2], argv[1::2], strict=True))
    if "--grace" not in options:
        raise SystemExit("--grace is required")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """The guardian: end dead servers' leftovers, wait for the server to go, end its own.

    ``--grace S``: seconds between ``SIGTERM`` and ``SIGKILL``; ``--cgroups``
    and ``--registry``: this server's instance cgroup directory and registry
    file; ``--cgroup-home`` and ``--registries``: where dead servers' are.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    grace = float(options["--grace"])
    # A terminal's signals are for the server; this process outlives it on purpose.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for option, isCgroup in (("--cgroup-home", True), ("--registries", False)):
        directory = options.get(option)
        for path in _registry.stale(directory) if directory else ():
            found = _endInstance(path if isCgroup else None, None if isCgroup else path, grace)
            if found:
                _say(f"ended {found} leftovers (processes or groups) of a dead server: {path}")
    _waitForEndOfFile(0)
    found = _endInstance(options.get("--cgroups"), options.get("--registry"), grace)
    if found:
        _say(f"the server is gone; ended {found} of its commands (processes or groups)")
    return 0


if __name__ == "__main__":
    # Hold no directory of the server's busy (a mount could not be unmounted).
    os.chdir("/")
    sys.exit(main())
