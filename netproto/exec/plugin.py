"""The exec service's plugin declaration and its ``twistd netproto`` options.

Every option is described in ``docs/exec.md``; the policy they make is
:class:`netproto.exec.policy.ExecPolicy`.
"""

from netproto.options import positive, seconds
from netproto.services import LazyService

service = LazyService(
    name="exec",
    description="remote command execution, streamed, with stdin, signals and timeouts",
    defaultEndpoint="tcp:8001:interface=127.0.0.1",
    builder="netproto.exec.server.makeFactory",
    enabledByDefault=True,
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
        ["exec-max-procs", None, 64, "Most commands running at once, server-wide.", positive],
        [
            "exec-max-procs-per-user",
            None,
            16,
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
            "[default: 256 with a cgroup, no bound without]",
            positive,
        ],
        [
            "exec-cwd",
            None,
            None,
            "Directory commands start in; a client's relative cwd starts from it. "
            "[default: the server's $HOME]",
        ],
        ["exec-path", None, None, "PATH of the commands. [default: /usr/local/bin:/usr/bin:/bin]"],
        [
            "exec-env-pass",
            None,
            None,
            "Comma-separated variables passed from the server's environment to commands. "
            "[default: LANG,LC_ALL,TZ]",
        ],
        [
            "exec-env-accept",
            None,
            None,
            "Comma-separated names (fnmatch patterns) of the variables a client may set. "
            "[default: * without --exec-allow; LANG,LC_*,TZ with it]",
        ],
        [
            "exec-kill-grace",
            None,
            5.0,
            "Seconds between SIGTERM and SIGKILL when a command's process group is ended.",
            seconds,
        ],
    ],
    optFlags=[
        ["exec-no-shell", None, 'Refuse shell commands ({"shell": ...}); argv only.'],
        [
            "exec-no-cgroups",
            None,
            "Never put commands in cgroups (no --exec-max-tasks bound as root; a command's "
            "processes outside its process group are then not ended with the server).",
        ],
    ],
)
