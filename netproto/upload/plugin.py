"""The upload service's plugin declaration and its ``twistd netproto`` options."""

from netproto.options import count, seconds
from netproto.services import LazyService

service = LazyService(
    name="upload",
    description="verified (SHA-256), atomic, resumable file upload",
    defaultEndpoint="tcp:8002:interface=127.0.0.1",
    builder="netproto.upload.server.makeFactory",
    enabledByDefault=True,
    optParameters=[
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
            64 * 1024 * 1024,
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
            8,  # netproto.upload.quota.DEFAULT_MAX_PER_USER (the plugin imports nothing heavy)
            "Uploads one user may have in progress at once; one more is refused "
            "with busy (0: no limit).",
            count,
        ],
        [
            "upload-resume-ttl",
            None,
            86400.0,
            "Seconds the data of an interrupted upload is kept for a resume "
            "after its last byte arrived.",
            seconds,
        ],
    ],
)
