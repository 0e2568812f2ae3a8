"""Releases: the version in one place, the changelog fragments, and a built wheel
that works once installed in a fresh virtualenv, away from the checkout.

The slow test builds as a release is built (``python -m build``: an sdist, then
a wheel from that sdist; with the build requirements of this virtualenv rather
than an isolated environment, which would cost 20 s), runs ``twine
check``, installs the wheel with its dependencies from the index pip uses here
into a new virtualenv (no ``--system-site-packages``: a dependency missing from
the metadata would be missing there), and runs ``twistd netproto`` and
``netproto`` from it with the checkout off ``PYTHONPATH``.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import netproto
from netproto.services import discoverServices
from tests.adversarial.outside import readUntil
from tests.support import Twistd

ROOT = Path(__file__).resolve().parent.parent
#: Not part of a source tree a release is built from.
UNSHIPPED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.pyc")


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def test_the_version_is_written_once() -> None:
    """setup.cfg reads it from netproto/__init__.py; nothing else repeats it."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: netproto.__version__"
    for path in (ROOT / "pyproject.toml", ROOT / "docs" / "conf.py"):
        assert netproto.__version__ not in path.read_text(), path


def test_every_changelog_fragment_is_gathered() -> None:
    """A fragment with a type towncrier does not know is skipped without a word:
    each one's text must appear in the draft of the next release."""
    draft = run(
        sys.executable, "-m", "towncrier", "build", "--draft", "--version", "9.9.9", cwd=ROOT
    ).stdout
    fragments = [p for p in (ROOT / "changelog.d").iterdir() if p.name != "README.md"]
    assert fragments
    for fragment in fragments:
        assert fragment.read_text().strip()[:60] in draft, fragment.name


def packagesOf(root: Path) -> set[str]:
    """Every package under netproto/ in the checkout, as a path with slashes."""
    return {str(init.parent.relative_to(root)) for init in (root / "netproto").rglob("__init__.py")}


@pytest.mark.slow
@pytest.mark.e2e
def test_the_built_wheel_installs_and_serves_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    dist = tmp_path / "dist"
    # --no-isolation: the build requirements of pyproject.toml from this venv
    # (build checks they are there), instead of 20 s installing them anew.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source)
    (wheel,) = dist.glob("netproto-*.whl")
    (sdist,) = dist.glob("netproto-*.tar.gz")
    assert wheel.name.startswith(f"netproto-{netproto.__version__}-")
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)

    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {p for p in packagesOf(ROOT) if f"{p}/__init__.py" not in names}
    assert not missing, f"packages not in the wheel (setup.cfg's packages list): {missing}"
    for shipped in ("twisted/plugins/netproto_plugin.py", "netproto/py.typed"):
        assert shipped in names
    data = [p for p in (ROOT / "netproto").rglob("*") if p.is_file() and "static" in p.parts]
    for path in data:
        assert str(path.relative_to(ROOT)) in names, path

    # The checkout off the path (tests/conftest.py puts it first), or pip would
    # take its egg-info for an installed netproto and the venv would use its code.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NETPROTO_HOME"] = str(tmp_path / "home")
    venv = tmp_path / "venv"
    # Without a pip of its own (ensurepip costs seconds): this pip installs into it.
    # --no-compile: byte-compiling Twisted would take longer than the rest.
    run(sys.executable, "-m", "venv", "--without-pip", venv, env=env)
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
        "--no-compile", wheel, env=env, cwd=tmp_path,
    )  # fmt: skip
    where = run(
        venv / "bin" / "python", "-c", "import netproto; print(netproto.__file__)", env=env,
        cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), where
    version = run(venv / "bin" / "netproto", "--version", env=env, cwd=tmp_path).stdout
    assert version.strip() == f"netproto {netproto.__version__}"
    assert "usage: netproto" in run(venv / "bin" / "netproto", "--help", env=env).stdout

    others = [
        arg
        for name, service in discoverServices().items()
        if service.enabledByDefault and name != "chat"
        for arg in (f"--{name}", "none")
    ]
    argv = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "--logfile=-", "netproto"]
    server = Twistd([*argv, "--chat", "tcp:0:interface=127.0.0.1", *others], env, tmp_path)
    try:
        server.waitListening("chat", timeout=60)
        assert re.search(rf"twistd \S+ \({re.escape(str(venv))}/bin/python", server.log)
        with socket.create_connection(("127.0.0.1", server.port("chat")), timeout=10) as chat:
            welcome = readUntil(chat, b"/help")
        assert b"Welcome to netproto chat" in welcome
    finally:
        server.stop()
