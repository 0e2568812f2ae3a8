"""Privilege drop: ``twistd --uid/--gid netproto`` started as root binds its ports,
then runs as the given user, which owns the server's state and runs its commands.

Run as root (as here and in CI; a test that needs root fails otherwise, saying
so), with the unprivileged ``nobody``/``nogroup`` every Debian system has. The
server's files live in a directory that user can reach (pytest's own temporary
directories are root's alone).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from netproto.runtime import RunAs, closedTo, handOver, plannedDrop
from tests.programs import requireRoot
from tests.support import NETPROTO, TWISTD, runTwistd, twistdEnv, waitUntil

USER, GROUP = "nobody", "nogroup"


@pytest.fixture
def root() -> None:
    requireRoot()


asRoot = pytest.mark.usefixtures("root")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A fresh directory under /tmp that the unprivileged user may enter."""
    where = Path(tempfile.mkdtemp(prefix="netproto-privdrop-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def owner(path: Path) -> tuple[str, str]:
    info = path.lstat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def test_only_a_root_server_given_another_uid_plans_a_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """--uid as root: dropped to that user (its primary group unless --gid); no --uid,
    --uid 0, --euid (real uid kept) or not root: nothing to plan."""
    monkeypatch.setattr(os, "getuid", lambda: 0)
    nobody = pwd.getpwnam(USER)
    planned = plannedDrop({"uid": nobody.pw_uid, "gid": None})
    assert planned == RunAs(nobody.pw_uid, nobody.pw_gid, USER, nobody.pw_dir, nobody.pw_shell)
    assert plannedDrop({"uid": nobody.pw_uid, "gid": 4242}) == RunAs.of(nobody.pw_uid, 4242)
    for options in ({"uid": None}, {"uid": 0}, {"uid": nobody.pw_uid, "euid": 1}, None):
        assert plannedDrop(options) is None
    monkeypatch.setattr(os, "getuid", lambda: nobody.pw_uid)
    assert plannedDrop({"uid": nobody.pw_uid}) is None


@asRoot
def test_hand_over_changes_roots_entries_only(tmp_path: Path) -> None:
    """What root made becomes the user's; a directory the user owns is not walked
    (what is below it is the user's own doing), and links are not followed."""
    user = RunAs.of(pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    data = tmp_path / "data"
    (data / "uploads" / "sub").mkdir(parents=True)
    (data / "token").write_text("t")
    (data / "link").symlink_to("/etc/passwd")
    kept = data / "theirs"
    kept.mkdir()
    os.chown(kept, user.uid, user.gid)
    (kept / "inside").write_text("root's, inside the user's directory")
    assert handOver(data, user) == 5  # data, uploads, sub, token, link
    for path in (data, data / "uploads" / "sub", data / "token", data / "link"):
        assert owner(path) == (USER, GROUP), path
    assert owner(Path("/etc/passwd")) == ("root", "root")
    assert owner(kept / "inside") == ("root", "root")


@asRoot
@pytest.mark.e2e
@pytest.mark.slow
def test_a_server_started_as_root_runs_as_the_user(reachable: Path) -> None:
    """twistd --uid nobody --gid nogroup netproto --tls: the ports are bound, then the
    server runs as nobody; its data dir, token, certificate and uploads are nobody's;
    commands run as nobody (in their pids cgroup when the server has them), and the
    guardian, started as root before the drop, still ends them when the server dies."""
    work = reachable / "work"
    work.mkdir()
    os.chown(work, pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    runner = (TWISTD, "-n", "--pidfile=", "--logfile=-", f"--uid={USER}", f"--gid={GROUP}")
    with runTwistd(
        reachable,
        *("--tls", "--exec-cwd", str(work), "--exec-kill-grace", "1"),
        services=("exec", "upload"),
        runner=runner,
    ) as server:
        process = psutil.Process(server.proc.pid)
        nobody = pwd.getpwnam(USER).pw_uid
        assert process.uids().real == process.uids().effective == nobody
        assert process.gids().real == grp.getgrnam(GROUP).gr_gid
        home = reachable / "home"
        for path in (home, home / "token", home / "tls-key.pem", home / "uploads"):
            assert owner(path) == (USER, GROUP), path
        assert stat.S_IMODE((home / "tls-key.pem").stat().st_mode) == 0o600

        def client(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [NETPROTO, *args],
                env=twistdEnv(home, {"XDG_CONFIG_HOME": str(reachable / "config")}),
                capture_output=True,
                timeout=60,
            )

        execAt = ("exec", "--tls", "--server", f"127.0.0.1:{server.port('exec')}")
        ran = client(
            *execAt,
            "--",
            "sh",
            "-c",
            "id -un; id -gn; echo $USER $HOME; touch made; cat /proc/self/cgroup",
        )
        assert ran.returncode == 0, ran.stderr
        name, group, environment, *cgroups = ran.stdout.decode().splitlines()
        assert (name, group) == (USER, GROUP)
        assert environment == f"{USER} {pwd.getpwnam(USER).pw_dir}"  # not root's
        assert owner(work / "made") == (USER, GROUP)
        if re.search(r"pids cgroup per command", server.log):
            assert any(re.search(r"pids:/netproto-", line) for line in cgroups), cgroups
        sent = reachable / "sent.txt"
        sent.write_text("dropped\n")
        stored = client(
            "upload", "--tls", "--server", f"127.0.0.1:{server.port('upload')}", str(sent)
        )
        assert stored.returncode == 0, stored.stderr
        assert owner(home / "uploads" / "sent.txt") == (USER, GROUP)

        sleeper = subprocess.Popen(
            [NETPROTO, *execAt, "--", "sleep", "300"],
            env=twistdEnv(home, {"XDG_CONFIG_HOME": str(reachable / "config")}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def sleeping() -> psutil.Process | None:
                children = process.children(recursive=True)
                return next((p for p in children if p.name() == "sleep"), None)

            sleep = waitUntil(sleeping, timeout=30)
            assert sleep is not None
            assert sleep.uids().real == nobody
            os.kill(server.proc.pid, signal.SIGKILL)
            waitUntil(lambda: not sleep.is_running() or sleep.status() == "zombie", timeout=30)
        finally:
            sleeper.kill()
            sleeper.wait(10)


@asRoot
def test_a_data_dir_the_user_cannot_reach_is_named(reachable: Path) -> None:
    """Under a directory closed to the user (root's home, pytest's temporary
    directories), the first closed directory is found, for the start-up warning;
    one the user owns, or may enter through its group, is open."""
    user = RunAs.of(pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid)
    closed = reachable / "closed"
    (closed / "data").mkdir(parents=True)
    closed.chmod(0o700)
    assert closedTo(closed / "data", user) == closed
    os.chown(closed, 0, user.gid)
    closed.chmod(0o710)
    assert closedTo(closed / "data", user) is None
    os.chown(closed, user.uid, 0)
    closed.chmod(0o700)
    assert closedTo(closed / "data", user) is None
