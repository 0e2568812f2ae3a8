"""What a client may run, and how: the exec policy, apart from any I/O but ``stat``.

:meth:`ExecPolicy.prepare` turns an ``R`` request (PROTOCOL.md section 3)
into a :class:`Prepared` command, or raises the :class:`ProtocolError` the
client must hear: ``bad-frame`` for a malformed request (the connection is
closed), ``not-allowed`` for what the policy refuses and ``not-found`` for a
program or directory that does not exist (the connection stays usable).

The environment a command gets is clean: it does not inherit the server's.

========================  ==================================================
``PATH``                  ``--exec-path`` (default :data:`DEFAULT_PATH`)
``HOME``                  the server's ``$HOME`` (else its user's home)
``USER``, ``LOGNAME``     the server's user
``SHELL``                 ``/bin/sh``; the login shell's path for a login shell
``TERM``                  on a terminal only: the request's ``pty`` ``term``
``LANG``                  the server's, else ``C.UTF-8``
``NETPROTO_USER``         the authenticated netproto user
``NETPROTO_PEER``         the client's address
========================  ==================================================

plus the server's own values of the variables named by ``--exec-env-pass``,
plus what the client sends in ``"env"`` for the names ``--exec-env-accept``
allows (never ``NETPROTO_*``). The program is looked up on the final ``PATH``
before anything starts, so a missing one is ``E not-found``, not an exit
status.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from netproto.errors import ProtocolError
from netproto.exec.pty import Terminal, parseTerminal

#: ``PATH`` of a command unless ``--exec-path`` says otherwise.
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
#: Server variables passed through unless ``--exec-env-pass`` says otherwise.
DEFAULT_ENV_PASS: Final = ("LANG", "LC_ALL", "TZ")
#: Names a client may set when ``--exec-allow`` restricts the programs and
#: ``--exec-env-accept`` is not given: with a restricted program list, a
#: client-set ``LD_PRELOAD`` or ``PATH`` would defeat it.
RESTRICTED_ENV_ACCEPT: Final = ("LANG", "LC_*", "TZ")
#: The shell of ``{"shell": ...}`` requests.
SHELL: Final = "/bin/sh"
#: Most commands running at once, server-wide, by default.
DEFAULT_MAX_PROCS: Final = 64
#: Most commands of one user running at once, by default.
DEFAULT_MAX_PROCS_PER_USER: Final = 16
#: Seconds between ``SIGTERM`` and ``SIGKILL`` when a command's group is ended.
DEFAULT_KILL_GRACE: Final = 5.0
#: Most tasks (processes and threads) of one command at once, where a pids
#: cgroup carries the bound (``--exec-max-tasks``). Without it one command
#: could fork until the machine has no pid left (a fork bomb: the per-user
#: limit counts commands, and ``RLIMIT_NPROC`` does not bind root). 256 is
#: far above what a parallel build needs (``make -j32``: a shell, a compiler
#: driver and its passes per job), and a full server (``--exec-max-procs``
#: 64 x 256 = 16384) stays within the default ``pid_max`` of 32768.
DEFAULT_MAX_TASKS: Final = 256
#: The longest ``timeout`` a request may give, in seconds (about 31 years):
#: anything longer is a client's mistake, and past it a number stops being a
#: time the reactor can schedule (a 400-digit integer overflowed ``float()``).
MAX_REQUEST_TIMEOUT: Final = 1e9
#: Longest argv or shell text, in bytes: the kernel's own limit is larger,
#: but a request must fit in one pre-allocated frame anyway.
MAX_ARGS_BYTES: Final = 128 * 1024


#: A directory changed this recently (seconds) is not trusted to show its next
#: change in its mtime (file systems stamp with a coarse clock): lookups on it
#: are not cached.
PATH_SETTLE: Final = 2.0


def _stamp(directory: str) -> tuple[int, int, int] | None:
    """What changes when an entry is added to, removed from or renamed in ``directory``."""
    try:
        st = os.stat(directory or ".")
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_dev)


class PathCache:
    """``shutil.which`` with its answers remembered, for the ``R`` of every command.

    A lookup walks the ``PATH`` directories with several ``stat`` calls each
    and a good deal of Python; a client running short commands in a loop
    asks the same question every time. An answer is kept per
    ``(name, PATH, cwd)`` with the ``mtime`` (and inode) of each directory
    that decided it: every directory for "not found", those up to the one it
    was found in otherwise. It is used again only while those directories
    are unchanged, so a program installed (or removed) since is noticed at
    the next request, at the price of one ``stat`` per directory. Directories
    modified within :data:`PATH_SETTLE` seconds are never trusted, since a
    coarse time stamp could hide a second change. A program whose mode
    changes in place is not noticed; starting it then fails with
    ``not-allowed`` or ``not-found`` all the same.

    :param clock: the wall clock (directory mtimes are wall-clock times).
    """

    limit: int = 256

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[
            tuple[str, str, str],
            tuple[str | None, tuple[tuple[str, tuple[int, int, int] | None], ...]],
        ] = {}

    def which(self, name: str, path: str, cwd: str) -> str | None:
        """The normalised path of ``name`` on ``path`` (relative entries from ``cwd``), or None."""
        key = (name, path, cwd)
        entry = self._entries.get(key)
        if entry is not None:
            found, stamps = entry
            for directory, stamp in stamps:
                if _stamp(directory) != stamp:
                    break
            else:
                return found
            del self._entries[key]
        dirs = path.split(os.pathsep)
        before = [(d, _stamp(d)) for d in dirs]
        raw = shutil.which(name, path=path)
        found = None if raw is None else os.path.normpath(os.path.join(cwd, raw))
        if raw is not None:
            for i, d in enumerate(dirs):
                if os.path.join(d, name) == raw:
                    before = before[: i + 1]
                    break
        settled = (self.clock() - PATH_SETTLE) * 1e9
        if all(stamp is None or stamp[0] < settled for _, stamp in before):
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = (found, tuple(before))
        return found


@dataclass(frozen=True)
class Prepared:
    """A request the policy accepted, ready to start.

    :ivar terminal: what the command's pseudo-terminal is to be, or None for pipes.
    :ivar login: whether it is the server user's login shell (``pty`` without
        ``argv`` or ``shell``).
    """

    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stdin: bool
    timeout: float | None
    shell: bool
    terminal: Terminal | None = None
    login: bool = False

    @property
    def window(self) -> tuple[int, int] | None:
        """The terminal's ``(rows, cols)``, or None for pipes."""
        return None if self.terminal is None else (self.terminal.rows, self.terminal.cols)

    def describe(self, limit: int = 200) -> str:
        """The command for logs, shortened, and always one line: a client's
        newline or other control character in an argument shows escaped (``\\n``),
        so it cannot split a log record or forge the next one."""
        if self.login:
            text = f"login shell {self.executable}"
        else:
            text = " ".join(self.argv[2:] if self.shell else self.argv)
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        if self.terminal is not None:
            text += f" (on a terminal, {self.terminal.term})"
        return text if len(text) <= limit else text[:limit] + "..."


def _usable(value: object) -> TypeGuard[str]:
    """Whether a client's ``value`` can be an argument, a path or a variable:
    a string without NUL that the file system encoding can encode (a JSON
    ``\\ud800`` escape makes a lone surrogate, which it cannot)."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def _splitList(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _serverUser() -> tuple[str, str, str]:
    """The server user's name, home and login shell."""
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return str(os.getuid()), "/", SHELL
    return entry.pw_name, entry.pw_dir, entry.pw_shell or SHELL


@dataclass(frozen=True)
class ExecPolicy:
    """The server's rules for exec (``twistd netproto --exec-*``).

    :ivar allow: program names or absolute paths that may run; ``None`` for any.
    :ivar shell: whether ``{"shell": ...}`` requests are accepted.
    :ivar maxTimeout: the longest a command may run, in seconds; ``None`` for no limit.
    :ivar maxProcs: most commands running at once, server-wide.
    :ivar maxProcsPerUser: most commands of one user running at once.
    :ivar cwd: the directory commands start in, and relative ``"cwd"`` values start from.
    :ivar path: the commands' ``PATH``.
    :ivar baseEnv: the clean environment (see the module docstring).
    :ivar envAccept: ``fnmatch`` patterns of the names a client may set.
    :ivar killGrace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :ivar maxTasks: the operator's bound on a command's tasks
        (``--exec-max-tasks``); None where none was given (a cgroup then
        has :data:`DEFAULT_MAX_TASKS`).
    :ivar cgroups: whether commands may get a pids cgroup each (not ``--exec-no-cgroups``).
    :ivar pty: whether commands may run on a terminal (not ``--exec-no-pty``).
    :ivar loginShell: the server user's login shell (``pty`` without a command);
        refused with ``shell``.
    """

    allow: tuple[str, ...] | None = None
    shell: bool = True
    maxTimeout: float | None = None
    maxProcs: int = DEFAULT_MAX_PROCS
    maxProcsPerUser: int = DEFAULT_MAX_PROCS_PER_USER
    cwd: str = "/"
    path: str = DEFAULT_PATH
    baseEnv: Mapping[str, str] = field(default_factory=dict)
    envAccept: tuple[str, ...] = ("*",)
    killGrace: float = DEFAULT_KILL_GRACE
    maxTasks: int | None = None
    cgroups: bool = True
    pty: bool = True
    loginShell: str = SHELL
    #: Program lookups on ``PATH`` (see :class:`PathCache`).
    paths: PathCache = field(default_factory=PathCache, compare=False, repr=False)

    @classmethod
    def fromOptions(
        cls, options: Mapping[str, Any], environ: Mapping[str, str] = os.environ, runAs: Any = None
    ) -> ExecPolicy:
        """The policy of ``twistd netproto``'s parsed ``--exec-*`` options.

        :param runAs: the user the server runs as once it drops root
            (:attr:`netproto.services.ServerContext.runAs`): commands get its
            name and home, not those of root, which builds the policy.

        :raises ValueError: for an option that makes no sense, with a message
            for the operator.
        """
        userName, userHome, loginShell = _serverUser()
        if runAs is not None:
            userName, userHome, loginShell = runAs.name, runAs.home, runAs.shell or SHELL
        home = (environ.get("HOME") if runAs is None else None) or userHome
        allowText = options.get("exec-allow")
        allow = _splitList(allowText) if allowText else None
        for entry in allow or ():
            if "/" in entry and not os.path.isabs(entry):
                raise ValueError(f"--exec-allow {entry!r}: give a program name or an absolute path")
        accept = options.get("exec-env-accept")
        envAccept: tuple[str, ...]
        if accept is None:
            envAccept = RESTRICTED_ENV_ACCEPT if allow is not None else ("*",)
        else:
            envAccept = _splitList(accept)
        envPass = options.get("exec-env-pass")
        passNames = DEFAULT_ENV_PASS if envPass is None else _splitList(envPass)
        path = options.get("exec-path") or DEFAULT_PATH
        base = {
            "PATH": path,
            "HOME": home,
            "USER": userName,
            "LOGNAME": userName,
            "SHELL": SHELL,
            "LANG": environ.get("LANG") or "C.UTF-8",
        }
        for name in passNames:
            if name in environ:
                base[name] = environ[name]
        cwd = options.get("exec-cwd") or home
        if not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise ValueError(f"--exec-cwd {cwd!r}: not an absolute path of a directory")

        def number(name: str, default: float) -> float:
            value = options.get(name)
            try:
                return default if value is None else float(value)
            except (TypeError, ValueError):
                raise ValueError(f"--{name} {value!r}: not a number") from None

        maxTimeout = number("exec-timeout", 0)
        maxProcs = int(number("exec-max-procs", DEFAULT_MAX_PROCS))
        perUser = int(number("exec-max-procs-per-user", DEFAULT_MAX_PROCS_PER_USER))
        grace = number("exec-kill-grace", DEFAULT_KILL_GRACE)
        tasks = options.get("exec-max-tasks")
        maxTasks = None if tasks is None else int(number("exec-max-tasks", 0))
        if (
            maxTimeout < 0
            or maxProcs < 1
            or perUser < 1
            or grace <= 0
            or (maxTasks is not None and maxTasks < 1)
        ):
            raise ValueError(
                "--exec-timeout must be >= 0, --exec-max-procs, --exec-max-procs-per-user "
                "and --exec-max-tasks >= 1, --exec-kill-grace > 0"
            )
        return cls(
            allow=allow,
            shell=not options.get("exec-no-shell"),
            maxTimeout=maxTimeout or None,
            maxProcs=maxProcs,
            maxProcsPerUser=perUser,
            cwd=cwd,
            path=path,
            baseEnv=base,
            envAccept=envAccept,
            killGrace=grace,
            maxTasks=maxTasks,
            cgroups=not options.get("exec-no-cgroups"),
            pty=not options.get("exec-no-pty"),
            loginShell=loginShell,
        )

    # -- one request ---------------------------------------------------------------

    def prepare(self, request: Mapping[str, Any], user: str, peer: str) -> Prepared:
        """Check an ``R`` request and resolve its program; see the module docstring.

        With ``"pty"`` (PROTOCOL.md section 5) the command runs on a terminal
        (``TERM`` from the request, stdin always open), and without ``argv``
        or ``shell`` it is the server user's login shell (``-`` before its
        name, as ``login`` and ``sshd`` start it), which counts as a shell
        command for ``--exec-no-shell`` and ``--exec-allow``.
        """
        terminal = None if request.get("pty") is None else parseTerminal(request["pty"])
        login = terminal is not None and "argv" not in request and "shell" not in request
        argv, shell = (
            ([os.path.basename(self.loginShell) or "sh"], True) if login else self._command(request)
        )
        stdin = request.get("stdin", False)
        if not isinstance(stdin, bool):
            raise ProtocolError("bad-frame", '"stdin" must be true or false')
        timeout = self._timeout(request.get("timeout"))
        env = self._environment(request.get("env"), user, peer)
        cwd = self._cwd(request.get("cwd"))
        if terminal is not None and not self.pty:
            raise ProtocolError("not-allowed", "terminals (pty) are disabled on this server")
        if shell and not self.shell:
            what = "login shells" if login else "shell commands"
            raise ProtocolError("not-allowed", f"{what} are disabled on this server")
        program = self.loginShell if login else argv[0]
        executable = self._resolve(program, env.get("PATH", ""), cwd)
        if self.allow is not None and not self._allowed(executable, env.get("PATH", ""), cwd):
            what = "the shell" if shell else repr(argv[0])
            raise ProtocolError("not-allowed", f"{what} may not run on this server")
        if terminal is not None:
            env["TERM"] = terminal.term
        if login:
            env["SHELL"] = executable
            argv = ["-" + argv[0]]
        return Prepared(
            executable=executable,
            argv=tuple(argv),
            env=env,
            cwd=cwd,
            stdin=stdin or terminal is not None,
            timeout=timeout,
            shell=shell,
            terminal=terminal,
            login=login,
        )

    def _command(self, request: Mapping[str, Any]) -> tuple[list[str], bool]:
        hasArgv, hasShell = "argv" in request, "shell" in request
        if hasArgv == hasShell:
            raise ProtocolError(
                "bad-frame", 'R needs exactly one of "argv" and "shell" (or "pty" alone)'
            )
        if hasShell:
            text = request["shell"]
            if not _usable(text) or not text:
                raise ProtocolError("bad-frame", '"shell" must be a non-empty string without NUL')
            argv = [SHELL, "-c", text]
        else:
            argv = request["argv"]
            if (
                not isinstance(argv, list)
                or not argv
                or not all(_usable(a) for a in argv)
                or not argv[0]
            ):
                raise ProtocolError(
                    "bad-frame", '"argv" must be a non-empty list of strings without NUL'
                )
        if sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv) > MAX_ARGS_BYTES:
            raise ProtocolError("bad-frame", f"the command is longer than {MAX_ARGS_BYTES} bytes")
        return argv, hasShell

    def _timeout(self, value: object) -> float | None:
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value <= MAX_REQUEST_TIMEOUT  # also false for NaN
        ):
            raise ProtocolError(
                "bad-frame",
                f'"timeout" must be a number of seconds above 0, at most {MAX_REQUEST_TIMEOUT:.0f}',
            )
        requested = float(value) if value is not None else None
        if self.maxTimeout is None:
            return requested
        return self.maxTimeout if requested is None else min(requested, self.maxTimeout)

    def _environment(self, value: object, user: str, peer: str) -> dict[str, str]:
        env = dict(self.baseEnv)
        if value is not None:
            if not isinstance(value, dict) or not all(
                _usable(k) and _usable(v) and k and "=" not in k for k, v in value.items()
            ):
                raise ProtocolError(
                    "bad-frame", '"env" must map names (no "=" or NUL) to strings (no NUL)'
                )
            for name in value:
                if name.startswith("NETPROTO_") or not any(
                    fnmatch.fnmatchcase(name, pattern) for pattern in self.envAccept
                ):
                    raise ProtocolError(
                        "not-allowed", f"the environment variable {name} may not be set"
                    )
            env.update(value)
        env["NETPROTO_USER"] = user
        env["NETPROTO_PEER"] = peer
        return env

    def _cwd(self, value: object) -> str:
        if value is None:
            return self.cwd
        if not _usable(value) or not value:
            raise ProtocolError("bad-frame", '"cwd" must be a non-empty string without NUL')
        cwd = os.path.normpath(os.path.join(self.cwd, os.path.expanduser(value)))
        if not os.path.isdir(cwd):
            raise ProtocolError("not-found", f"no such directory: {value}")
        return cwd

    def _resolve(self, program: str, path: str, cwd: str) -> str:
        """The file ``program`` names: looked up on ``path`` unless it has a ``/``."""
        if "/" in program:
            candidate = os.path.normpath(os.path.join(cwd, program))
            if not os.path.exists(candidate):
                raise ProtocolError("not-found", f"no such program: {program}")
            if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
                raise ProtocolError("not-allowed", f"not an executable file: {program}")
            return candidate
        found = self.paths.which(program, path, cwd)
        if found is None:
            raise ProtocolError("not-found", f"no such program on PATH: {program}")
        return found

    def _allowed(self, executable: str, path: str, cwd: str) -> bool:
        """Whether ``executable`` is one an ``--exec-allow`` entry names.

        Paths are compared as written, without following symlinks: with a
        multi-call binary (busybox), allowing ``ls`` must not allow ``sh``.
        """
        for entry in self.allow or ():
            if "/" in entry:
                if os.path.normpath(entry) == executable:
                    return True
                continue
            if self.paths.which(entry, path, cwd) == executable:
                return True
        return False
