"""The chat cluster's link to a real redis-server, in this process: TLS (``rediss://``
with ``ssl_ca_certs``), a password and a database number from the URL, and members
that join, rename and talk through it (netproto.chat.redislink, netproto.chat.redisurl)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from netproto.chat.cluster import ClusterChatServer
from netproto.chat.redislink import RedisLink
from netproto.chat.redisurl import RedisAddress
from netproto.chat.scripts import SCRIPTS
from tests.chatkit import Fake
from tests.rediskit import Redis, command, freePort
from tests.support import eventually

PASSWORD = "s3cret:/@"  # characters a URL must escape


@pytest.fixture
def tlsRedis(tmp_path: Path) -> Iterator[tuple[Redis, int, Path]]:
    """A redis-server with a password, its plain port on loopback for the test's own
    checks, and a TLS port with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tlsPort = freePort()
    redis = Redis(
        tmp_path, None, "--requirepass", PASSWORD, "--tls-port", str(tlsPort),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
    )  # fmt: skip
    redis.start()
    try:
        yield redis, tlsPort, cert
    finally:
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_members_talk_over_tls_with_a_password_in_a_chosen_database(
    tlsRedis: tuple[Redis, int, Path],
) -> None:
    """Over ``rediss://:PASSWORD@127.0.0.1:PORT/3?ssl_ca_certs=CA``, the link comes up,
    two members get their guest nicks and welcome, one renames, the other hears it
    and its line; the cluster's keys are in database 3."""
    redis, tlsPort, cert = tlsRedis
    escaped = PASSWORD.replace("%", "%25").replace(":", "%3A").replace("/", "%2F")
    escaped = escaped.replace("@", "%40")
    url = f"rediss://:{escaped}@127.0.0.1:{tlsPort}/3?ssl_ca_certs={cert}"
    link = RedisLink(reactor, RedisAddress.fromURL(url), SCRIPTS)
    server = ClusterChatServer(link, 20, reactor, 0.0)
    link.start()
    try:
        await eventually(lambda: server.linked, timeout=20)
        a, b = Fake(), Fake()
        server.connect(a)
        server.connect(b)
        await eventually(lambda: a.lines and b.lines)
        assert a.take()[0].startswith("*** Welcome to netproto chat. You are guest")
        old = a.nick
        server.rename(a, "tls-alice")
        await eventually(lambda: any("now known as" in line for line in b.lines))
        server.say(a, "over TLS")
        await eventually(lambda: "<tls-alice> over TLS" in b.lines)
        assert b.lines[-2:] == [f"*** {old} is now known as tls-alice", "<tls-alice> over TLS"]
        inDb3 = command(redis.port, "KEYS", "netproto:chat:nick:*", password=PASSWORD, db=3)
        assert len(inDb3) == 2
        assert command(redis.port, "DBSIZE", password=PASSWORD) == 0
    finally:
        await server.stop()
