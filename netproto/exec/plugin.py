"""The exec service's plugin declaration: its ``twistd netproto`` options and
its ``netproto exec`` subcommand.

Every option is described in ``docs/exec.md``; the policy they make is
:class:`netproto.exec.policy.ExecPolicy`, whose constants are the defaults
(written once, there, with their reasons; the policy module imports only the
standard library, so discovery stays light).
"""

from netproto.exec.policy import (
    DEFAULT_ENV_PASS,
    DEFAULT_KILL_GRACE,
    DEFAULT_MAX_PROCS,
    DEFAULT_MAX_PROCS_PER_USER,
    DEFAULT_MAX_TASKS,
    DEFAULT_PATH,
    RESTRICTED_ENV_ACCEPT,
)
from netproto.options import positive, seconds
from netproto.services import ClientCommand, LazyService, never

service = LazyService(
    name="exec",
    description="remote command execution, streamed, with stdin, signals and timeouts",
    defaultEndpoint="tcp:8001:interface=127.0.0.1",
    builder="netproto.exec.server.makeFactory",
    enabledByDefault=True,
    usesOpenSSL=never,
    client=ClientCommand("netproto.exec.client", "run a command on the server, like ssh HOST CMD"),
    optParameters=[
        [
            "exec-allow",
            None,
            None,
            "Comma-separated program names (looked up on the commands' PATH) or absolute "
            "paths that may run. [default: any program, as with ssh]",
        ],
        [
            "exec-timeout",
            None,
            0,
            "Longest a command may run, in seconds; a client's own timeout is capped by it. "
            "0: no limit.",
            seconds,
        ],
        [
            "exec-max-procs",
            None,
            DEFAULT_MAX_PROCS,
            "Most commands running at once, server-wide.",
            positive,
        ],
        [
            "exec-max-procs-per-user",
            None,
            DEFAULT_MAX_PROCS_PER_USER,
            "Most commands of one user running at once.",
            positive,
        ],
        [
            "exec-max-tasks",
            None,
            None,
            "Most tasks (processes and threads) one command may have at once: its pids "
            "cgroup's pids.max where the server may create cgroups, else (given, and not "
            "root) RLIMIT_NPROC, which counts every process of the server's user. "
            f"[default: {DEFAULT_MAX_TASKS} with a cgroup, no bound without]",
            positive,
        ],
        [
            "exec-cwd",
            None,
            None,
            "Directory commands start in; a client's relative cwd starts from it. "
            "[default: the server's $HOME]",
        ],
        ["exec-path", None, None, f"PATH of the commands. [default: {DEFAULT_PATH}]"],
        [
            "exec-env-pass",
            None,
            None,
            "Comma-separated variables passed from the server's environment to commands. "
            f"[default: {','.join(DEFAULT_ENV_PASS)}]",
        ],
        [
            "exec-env-accept",
            None,
            None,
            "Comma-separated names (fnmatch patterns) of the variables a client may set. "
            f"[default: * without --exec-allow; {','.join(RESTRICTED_ENV_ACCEPT)} with it]",
        ],
        [
            "exec-kill-grace",
            None,
            DEFAULT_KILL_GRACE,
            "Seconds between SIGTERM and SIGKILL when a command's process group is ended.",
            seconds,
        ],
    ],
    optFlags=[
        [
            "exec-no-shell",
            None,
            'Refuse shell commands ({"shell": ...}) and login shells; argv only.',
        ],
        [
            "exec-no-pty",
            None,
            "Refuse terminals (R with pty: netproto exec -t, login shells); the exec "
            'hello then offers no "pty".',
        ],
        [
            "exec-no-cgroups",
            None,
            "Never put commands in cgroups (no --exec-max-tasks bound as root; a command's "
            "processes outside its process group are then not ended with the server).",
        ],
    ],
)
