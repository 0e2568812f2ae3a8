"""TLS and UNIX endpoints come from configuration: exec over ssl: and unix:, via the client."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import NETPROTO, runTwistd, twistdEnv

pytestmark = pytest.mark.e2e


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def makeCertificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for localhost/127.0.0.1 signed by it.

    Returns (CA directory for trustRoots, server key, server certificate).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("netproto test CA"))
        .issuer_name(_name("netproto test CA"))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    caDir = where / "ca"
    caDir.mkdir()
    (caDir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keyPath, certPath = where / "server.key", where / "server.pem"
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyPath.chmod(0o600)
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return caDir, keyPath, certPath


def runClient(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NETPROTO, "exec", *args],
        env=twistdEnv(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_exec_over_tls_and_unix_endpoints(tmp_path: Path) -> None:
    """One server, exec on ssl: and on unix:; the client reaches both with --endpoint,
    verifying the TLS certificate against the test's CA; an unknown CA is refused."""
    caDir, key, cert = makeCertificates(tmp_path)
    sock = tmp_path / "exec.sock"
    with runTwistd(
        tmp_path,
        "--exec",
        f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        "--service",
        f"exec=unix:{sock}:mode=600",
        services=("exec",),
    ) as server:
        server.waitLog(r"exec listening on unix:")
        port = server.port("exec")
        tls = runClient(
            tmp_path,
            "--endpoint",
            f"tls:host=localhost:port={port}:trustRoots={caDir}",
            "--",
            "echo",
            "over tls",
        )
        assert (tls.returncode, tls.stdout) == (0, "over tls\n"), tls.stderr
        unix = runClient(tmp_path, "--endpoint", f"unix:path={sock}", "--", "echo", "over unix")
        assert (unix.returncode, unix.stdout) == (0, "over unix\n"), unix.stderr

        otherCa = tmp_path / "other"
        otherCa.mkdir()
        wrongDir, _, _ = makeCertificates(otherCa)
        refused = runClient(
            tmp_path,
            "--endpoint",
            f"tls:host=localhost:port={port}:trustRoots={wrongDir}",
            "--",
            "echo",
            "should not run",
        )
        assert refused.returncode != 0
        assert "should not run" not in refused.stdout
        assert "Traceback" not in refused.stderr
