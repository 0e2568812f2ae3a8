"""Where commands are kept so that they die with the server, and what bounds them:
the pids cgroups, the registry of process groups, RLIMIT_NPROC (real processes,
no server). The server killed with its commands running is in
``tests/adversarial/test_exec_attacks.py``."""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from netproto.exec import registry
from netproto.exec.cgroups import PidsCgroups, endCgroups, members, pidsHome, taskCount
from netproto.exec.confine import Confinement
from netproto.exec.procs import liveGroups, liveSessions, startTime
from netproto.exec.registry import GroupRegistry, endGroups, recorded
from netproto.exec.spawn import Spawned, spawn
from tests.execkit import drain
from tests.support import waitUntil

# -- finding the pids hierarchy --------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("own", "root", "mountPoint", "expected"),
    [
        ("/", "/", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids"),
        (
            "/system.slice/x.service",
            "/",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/pids/system.slice/x.service",
        ),
        ("/docker/abc/sub", "/docker/abc", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/sub"),
        ("/elsewhere", "/docker/abc", "/sys/fs/cgroup/pids", None),
        ("/a b", "/", "/mnt/my\\040pids", "/mnt/my pids/a b"),
    ],
)
def test_the_servers_own_pids_cgroup_is_found_below_its_mount(
    tmp_path: Path, own: str, root: str, mountPoint: str, expected: str | None
) -> None:
    """The directory is the mount point plus the path of our cgroup below the
    mount's root (a container sees its own cgroup as the root)."""
    cgroup = write(tmp_path / "cgroup", f"9:name=systemd:/\n8:pids:{own}\n0::/\n")
    mountinfo = write(
        tmp_path / "mountinfo",
        "30 25 0:26 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n"
        f"31 25 0:27 {root} {mountPoint} rw,nosuid shared:10 - cgroup cgroup rw,pids\n",
    )
    assert pidsHome(cgroup, mountinfo) == expected


def test_no_pids_hierarchy_is_none(tmp_path: Path) -> None:
    """cgroup v2 only (or no cgroups): no v1 pids cgroup to use."""
    cgroup = write(tmp_path / "cgroup", "0::/user.slice\n")
    mountinfo = write(
        tmp_path / "mountinfo", "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    assert pidsHome(cgroup, mountinfo) is None
    assert pidsHome(str(tmp_path / "missing"), mountinfo) is None


# -- processes to confine ----------------------------------------------------------------


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def shell(script: str, devnull: int) -> Spawned:
    return spawn(
        "/bin/sh",
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        stdin=False,
        devnull=devnull,
    )


def reap(child: Spawned) -> None:
    """Close a spawned child's pipes and reap its first process."""
    os.close(child.stdout)
    os.close(child.stderr)
    if child.pidfd is not None:
        os.close(child.pidfd)
    waitUntil(lambda: child.poll() is not None)


def session(script: str) -> subprocess.Popen[bytes]:
    """A shell in a session (and process group) of its own, as a command runs."""
    return subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE)


def pidsOf(proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """The pids a script printed, one a line, once it has printed ``count``."""
    assert proc.stdout is not None
    return [int(proc.stdout.readline()) for _ in range(count)]


# -- the registry of process groups -------------------------------------------------------


def test_registry_records_live_in_the_file_until_removed(tmp_path: Path) -> None:
    """What is added is in the file (for the guardian and the next server) as
    group id and start time; a removed record is not; closing removes the file."""
    path = str(tmp_path / registry.instanceName(1, 2, 3))
    reg = GroupRegistry(path, 4)
    me = os.getpid()
    first, second = reg.add(me), reg.add(os.getppid())
    assert first is not None and second is not None
    assert sorted(recorded(path)) == sorted(
        [(me, startTime(me)), (os.getppid(), startTime(os.getppid()))]
    )
    reg.remove(first)
    assert recorded(path) == [(os.getppid(), startTime(os.getppid()))]
    assert reg.add(999_999_999) is None  # no such process: nothing to record
    reg.close()
    assert not os.path.exists(path)


def test_a_registry_of_another_boot_records_nothing(tmp_path: Path) -> None:
    """Start times count from boot: after a reboot an old record could name an
    unrelated process with the same pid and start time."""
    path = str(tmp_path / "reg")
    reg = GroupRegistry(path, 2)
    reg.add(os.getpid())
    with open(path, "r+b") as f:
        f.seek(len(registry.MAGIC))
        f.write(b"0" * 36)
    assert recorded(path) == []
    reg.close()


def test_only_dead_servers_instances_are_stale(tmp_path: Path) -> None:
    """An instance is stale when no process has its pid with its start time."""
    me = os.getpid()
    start = startTime(me)
    assert start is not None
    for name in (
        registry.instanceName(me, start, 1),  # this process: alive
        registry.instanceName(me, start + 1, 1),  # this pid, another start: dead
        registry.instanceName(999_999_999, 5, 1),  # no such pid: dead
        "netproto-x",  # not an instance
    ):
        (tmp_path / name).touch()
    assert sorted(os.path.basename(p) for p in registry.stale(str(tmp_path))) == sorted(
        [registry.instanceName(me, start + 1, 1), registry.instanceName(999_999_999, 5, 1)]
    )


def killGroups(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_endGroups_ends_recorded_groups_and_spares_a_reused_pid() -> None:
    """A recorded group whose leader still has the recorded start time is ended,
    its members too; so is one whose leader is gone but left members; a record
    whose pid is now a process started at another time is left alone."""
    live = session("sleep 60 & echo $!; sleep 60")
    orphaned = session("sleep 60 & echo $!")
    stranger = session("echo $$; sleep 60")
    try:
        for proc in (live, orphaned, stranger):
            pidsOf(proc, 1)
        orphaned.wait()  # its leader exited and is reaped; its member lives on
        liveStart, strangerStart = startTime(live.pid), startTime(stranger.pid)
        assert liveStart is not None and strangerStart is not None
        assert liveGroups({live.pid, orphaned.pid, stranger.pid}) == {
            live.pid,
            orphaned.pid,
            stranger.pid,
        }
        records = [(live.pid, liveStart), (orphaned.pid, 1), (stranger.pid, strangerStart + 1)]
        assert endGroups(records, grace=5) == 2
        assert liveGroups({live.pid, orphaned.pid, stranger.pid}) == {stranger.pid}
    finally:
        killGroups(live, orphaned, stranger)


def test_endGroups_ends_the_whole_session_of_a_command() -> None:
    """A command whose job-control shell put a job in a process group of its
    own (as an interactive shell on a terminal does with every job), the job
    ignoring SIGHUP and SIGTERM: ending the command ends that job too."""
    script = (
        "import os, signal\n"
        "os.setpgid(0, 0)\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print(os.getpid(), flush=True)\n"
        "signal.pause()\n"
    )
    proc = session(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} & wait")
    try:
        job = pidsOf(proc, 1)[0]
        assert os.getpgid(job) != proc.pid and os.getsid(job) == proc.pid
        start = startTime(proc.pid)
        assert start is not None
        assert endGroups([(proc.pid, start)], grace=0.2) == 1
        assert liveSessions({proc.pid}) == set()
    finally:
        killGroups(proc)


# -- pids cgroups -------------------------------------------------------------------------


_made = itertools.count(1_000_000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cgroups(clock: Clock) -> Iterator[PidsCgroups]:
    """This process's command cgroups, at most 8 tasks each (where it may make
    them), with a grace of 5 s on ``clock``."""
    me = os.getpid()
    name = registry.instanceName(me, startTime(me) or 0, next(_made))
    made = PidsCgroups.create(name, 8, grace=5, clock=clock.seconds)
    if made is None:
        pytest.skip("no writable cgroup v1 pids hierarchy on this machine")
    yield made
    endCgroups(made.instance, grace=1)
    made.close()


def pidsLine(path: str) -> str:
    with open(path) as f:
        return next(line for line in f if ":pids:" in line)


def test_a_command_is_born_in_its_cgroup_and_the_server_thread_goes_home(
    cgroups: PidsCgroups, devnull: int
) -> None:
    """The first process of a command is in its cgroup from birth; the thread
    that started it is back in the server's own cgroup."""
    home = pidsLine("/proc/thread-self/cgroup")
    cgroup = cgroups.acquire()
    child = cgroups.startInside(cgroup, lambda: shell("exec sleep 60", devnull))
    try:
        assert members(cgroup.path) == [child.pid]
        assert pidsLine(f"/proc/{child.pid}/cgroup").endswith(
            cgroup.path.removeprefix(str(Path(cgroups.home))) + "\n"
        )
        assert pidsLine("/proc/thread-self/cgroup") == home
    finally:
        os.kill(child.pid, signal.SIGKILL)
        reap(child)


def test_pids_max_bounds_a_fork_bomb(cgroups: PidsCgroups, devnull: int) -> None:
    """A command forking 40 sleeps in a cgroup of 8 tasks gets at most 8: the
    shell's fork fails ("Cannot fork") and the kernel counts the refusals."""
    cgroup = cgroups.acquire()
    child = cgroups.startInside(
        cgroup, lambda: shell("for i in $(seq 40); do sleep 30 & done; wait", devnull)
    )
    try:
        waitUntil(lambda: child.poll() is not None, timeout=30)
        count = taskCount(cgroup.path)
        assert count is not None and count <= 8
        with open(os.path.join(cgroup.path, "pids.events")) as f:
            assert int(f.read().split()[1]) > 0
    finally:
        endCgroups(cgroups.instance, grace=1)
        drain(child)
    assert not os.path.exists(cgroup.path)


def test_an_emptied_cgroup_is_reused_and_what_is_left_in_one_is_ended(
    cgroups: PidsCgroups, clock: Clock, devnull: int
) -> None:
    """An empty cgroup serves the next command. One still holding a process
    that left the command's group (``setsid``, and ignoring ``SIGTERM``) when
    the group is gone has it sent TERM and is set aside; after the grace period
    the sweep sends KILL, and takes the emptied cgroup back."""
    first = cgroups.acquire()
    child = cgroups.startInside(first, lambda: shell("true", devnull))
    drain(child)
    cgroups.release(first)
    assert cgroups.acquire() is first
    script = "setsid sh -c 'trap \"\" TERM; exec sleep 60' >/dev/null 2>&1 & echo $!"
    child = cgroups.startInside(first, lambda: shell(script, devnull))
    (escapee,) = (int(line) for line in drain(child).split())
    waitUntil(lambda: _command(escapee) == b"sleep")
    cgroups.release(first)
    assert cgroups.retired == [first]
    second = cgroups.acquire()
    assert second is not first
    clock.advance(1)
    cgroups.sweep()
    assert liveGroups({escapee}) == {escapee}  # TERM ignored, KILL not yet due
    clock.advance(4)
    cgroups.sweep()
    waitUntil(lambda: taskCount(first.path) == 0 or _reap(escapee), timeout=10)
    cgroups.sweep()
    assert cgroups.retired == []
    cgroups.release(second)
    assert {cgroups.acquire(), cgroups.acquire()} == {first, second}


def _command(pid: int) -> bytes:
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().strip()


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of this process (it is, when this
    process became a subreaper by running the exec factory); never true, so
    that the caller goes on waiting for what it waits for."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return False


def test_endCgroups_ends_what_left_the_process_group(cgroups: PidsCgroups, devnull: int) -> None:
    """A process that left its command's group (setsid) is still in the
    command's cgroup, and ended with it; the cgroups are removed."""
    cgroup = cgroups.acquire()
    child = cgroups.startInside(
        cgroup, lambda: shell("setsid sleep 60 >/dev/null 2>&1 & echo $!", devnull)
    )
    (escapee,) = (int(line) for line in drain(child).split())
    waitUntil(lambda: os.getsid(escapee) == escapee)
    assert endCgroups(cgroups.instance, grace=5) == 1
    waitUntil(lambda: not liveGroups({escapee}), timeout=10)
    assert not os.path.exists(cgroups.instance)


# -- RLIMIT_NPROC and the registry through Confinement -----------------------------------


def test_nproc_is_the_childs_from_birth_and_the_servers_own_is_kept(devnull: int) -> None:
    """Without cgroups, the bound reaches the command as its RLIMIT_NPROC; the
    server's own limit is what it was."""
    before = resource.getrlimit(resource.RLIMIT_NPROC)
    confinement = Confinement(None, None, 7)
    child, release = confinement.start(lambda: shell("sleep 60", devnull))
    try:
        with open(f"/proc/{child.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max processes"))
        assert line.split()[2] == "7"
        assert resource.getrlimit(resource.RLIMIT_NPROC) == before
    finally:
        os.kill(child.pid, signal.SIGKILL)
        reap(child)
        release()


def test_without_cgroups_a_command_is_recorded_until_its_group_is_gone(
    tmp_path: Path, devnull: int
) -> None:
    """The registry holds the command's group while it runs, not after."""
    path = str(tmp_path / "reg")
    confinement = Confinement(None, GroupRegistry(path, 2), None)
    child, release = confinement.start(lambda: shell("true", devnull))
    assert recorded(path) == [(child.pid, startTime(child.pid))]
    drain(child)
    release()
    assert recorded(path) == []
    confinement.close()
    assert not os.path.exists(path)
