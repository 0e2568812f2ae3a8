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

import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    """The guardian: end dead servers' leftovers, wait for the server to go, end its own."""
    parser = argparse.ArgumentParser(prog="python -m netproto.exec.guardian")
    parser.add_argument("--grace", type=float, required=True)
    parser.add_argument("--cgroups", help="this server's instance cgroup directory")
    parser.add_argument("--cgroup-home", help="where dead servers' cgroup directories are")
    parser.add_argument("--registry", help="this server's registry file")
    parser.add_argument("--registries", help="where dead servers' registry files are")
    args = parser.parse_args(argv)
    # A terminal's signals are for the server; this process outlives it on purpose.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for directory, isCgroup in ((args.cgroup_home, True), (args.registries, False)):
        for path in _registry.stale(directory) if directory else ():
            found = _endInstance(path if isCgroup else None, None if isCgroup else path, args.grace)
            if found:
                _say(f"ended {found} leftovers (processes or groups) of a dead server: {path}")
    _waitForEndOfFile(0)
    found = _endInstance(args.cgroups, args.registry, args.grace)
    if found:
        _say(f"the server is gone; ended {found} of its commands (processes or groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
