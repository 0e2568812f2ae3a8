"""The upload service's plugin declaration: its ``twistd netproto`` options,
their defaults (the one place they are written; :mod:`netproto.upload.server`
reads them from here), and its ``netproto upload`` subcommand.

Imported whenever plugins are discovered, so it imports nothing heavy.
"""

from typing import Final

from netproto.options import count, seconds
from netproto.services import ClientCommand, LazyService, never

#: Bytes of free space an upload must leave on the upload directory's file
#: system: room for the server's own logs and state, and for the rest of the
#: machine, when uploads fill the disk.
DEFAULT_MIN_FREE: Final = 64 * 1024 * 1024
#: Default cap on one user's uploads in progress at once. Each holds a
#: partial file and two descriptors, up to 16 MiB of received data not yet
#: on disk, and worker-thread time; the service has 8 worker threads, so
#: more at once would only queue. 0 means no cap.
DEFAULT_MAX_PER_USER: Final = 8
#: Seconds the data of an interrupted upload is kept for a resume after its
#: last byte arrived: a day covers a laptop closed overnight.
DEFAULT_RESUME_TTL: Final = 86400.0


service = LazyService(
    name="upload",
    description="verified (SHA-256), atomic, resumable file upload",
    defaultEndpoint="tcp:8002:interface=127.0.0.1",
    builder="netproto.upload.server.makeFactory",
    enabledByDefault=True,
    usesOpenSSL=never,
    client=ClientCommand("netproto.upload.client", "upload files and directories, verified"),
    moreClients={
        "ls": ClientCommand("netproto.upload.ls", "list the files on the upload service"),
        "download": ClientCommand(
            "netproto.upload.download", "download files and directories, verified"
        ),
    },
    optParameters=[
        [
            "upload-dir",
            None,
            None,
            "Where uploads land; created with mode 0700 if missing. [default: DATA_DIR/uploads]",
        ],
        [
            "upload-max-size",
            None,
            0,
            "Largest file in bytes a client may upload; larger ones are refused "
            "with too-large (0: no limit).",
            count,
        ],
        [
            "upload-min-free",
            None,
            DEFAULT_MIN_FREE,
            "Bytes of free space an upload must leave on the upload directory's "
            "file system; one that would not is refused with no-space.",
            count,
        ],
        [
            "upload-quota-files",
            None,
            0,
            "Files one user may store in the upload directory; past it an upload "
            "is refused with no-space naming the quota (0: no limit).",
            count,
        ],
        [
            "upload-quota-bytes",
            None,
            0,
            "Bytes one user may store in the upload directory; past it an upload "
            "is refused with no-space naming the quota (0: no limit).",
            count,
        ],
        [
            "upload-max-per-user",
            None,
            DEFAULT_MAX_PER_USER,
            "Uploads one user may have in progress at once; one more is refused "
            "with busy (0: no limit).",
            count,
        ],
        [
            "upload-resume-ttl",
            None,
            DEFAULT_RESUME_TTL,
            "Seconds the data of an interrupted upload is kept for a resume "
            "after its last byte arrived.",
            seconds,
        ],
    ],
)
