"""The PATH lookup cache of the exec policy (:class:`netproto.exec.policy.PathCache`):
answers are reused only while the directories that decided them are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netproto.errors import ProtocolError
from netproto.exec.policy import PATH_SETTLE, ExecPolicy, PathCache


def makeProgram(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def age(directory: Path, seconds: float = 10 * PATH_SETTLE) -> None:
    """Make ``directory``'s mtime old enough to be trusted by the cache."""
    st = directory.stat()
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def dirs(tmp_path: Path) -> tuple[Path, Path, str]:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    return first, second, f"{first}:{second}"


def test_a_program_installed_after_a_miss_is_found_at_the_next_lookup(tmp_path: Path) -> None:
    """A "not found" is cached, but a new program in any PATH directory changes
    that directory's mtime, so the next lookup finds it."""
    first, second, path = dirs(tmp_path)
    age(first)
    age(second)
    cache = PathCache()
    assert cache.which("hello", path, str(tmp_path)) is None
    assert len(cache._entries) == 1
    prog = makeProgram(second / "hello")
    assert cache.which("hello", path, str(tmp_path)) == str(prog)


def test_a_program_installed_earlier_on_PATH_takes_over(tmp_path: Path) -> None:
    """A cached hit in the second directory is dropped once a program of that
    name appears in the first."""
    first, second, path = dirs(tmp_path)
    makeProgram(second / "hello")
    age(first)
    age(second)
    cache = PathCache()
    assert cache.which("hello", path, str(tmp_path)) == str(second / "hello")
    newer = makeProgram(first / "hello")
    assert cache.which("hello", path, str(tmp_path)) == str(newer)


def test_a_removed_program_is_no_longer_found(tmp_path: Path) -> None:
    """Removing the program changes its directory: the cached hit is not reused."""
    first, second, path = dirs(tmp_path)
    prog = makeProgram(second / "hello")
    age(first)
    age(second)
    cache = PathCache()
    assert cache.which("hello", path, str(tmp_path)) == str(prog)
    prog.unlink()
    assert cache.which("hello", path, str(tmp_path)) is None


def test_a_hit_is_reused_without_a_new_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the directories are unchanged, shutil.which is not called again
    (the point of the cache), and the answer is the same."""
    first, second, path = dirs(tmp_path)
    prog = makeProgram(second / "hello")
    age(first)
    age(second)
    cache = PathCache()
    assert cache.which("hello", path, str(tmp_path)) == str(prog)
    calls: list[str] = []
    monkeypatch.setattr("shutil.which", lambda name, path=None: calls.append(name))
    assert cache.which("hello", path, str(tmp_path)) == str(prog)
    assert calls == []


def test_recently_changed_directories_are_not_trusted(tmp_path: Path) -> None:
    """A directory modified within PATH_SETTLE seconds may hide a second change
    in the same time stamp: lookups on it are not cached."""
    first, second, path = dirs(tmp_path)
    makeProgram(second / "hello")
    cache = PathCache()
    assert cache.which("hello", path, str(tmp_path)) == str(second / "hello")
    assert cache._entries == {}
    later = PathCache(clock=lambda: (second.stat().st_mtime_ns / 1e9) + PATH_SETTLE + 1)
    later.which("hello", path, str(tmp_path))
    assert len(later._entries) == 1


def test_policy_reports_not_found_then_runs_a_newly_installed_program(tmp_path: Path) -> None:
    """Through the policy: E not-found while the program is missing, then the
    program once it is installed, with the same policy (and cache)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    age(bin_)
    policy = ExecPolicy.fromOptions(
        {"exec-cwd": str(tmp_path), "exec-path": str(bin_)}, environ={"HOME": str(tmp_path)}
    )
    with pytest.raises(ProtocolError) as info:
        policy.prepare({"argv": ["fresh"]}, user="a", peer="p")
    assert info.value.code == "not-found"
    prog = makeProgram(bin_ / "fresh")
    assert policy.prepare({"argv": ["fresh"]}, user="a", peer="p").executable == str(prog)
