"""The upload service's plugin declaration and its ``twistd netproto`` options."""

from netproto.services import LazyService

service = LazyService(
    name="upload",
    description="verified (SHA-256), atomic, resumable file upload",
    defaultEndpoint="tcp:8002:interface=127.0.0.1",
    builder="netproto.upload.server.makeFactory",
    enabledByDefault=True,
    optParameters=[],
)
