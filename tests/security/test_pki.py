"""Mutual TLS from the local CA: who gets in, who is refused, and what the files look like.

The echo target is the standard health service, so these tests need no project protos.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage import pki
from linkage.rpc import TLS_SERVER_NAME_ENV, Security

SERVER = "network"
CLIENT = "org.city-13101"


class RecordingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """A health servicer that records the verified identity of every caller."""

    def __init__(self) -> None:
        self.peers: list[str | None] = []

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        self.peers.append(pki.peer_identity(context))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class Server:
    """A running mTLS health server on 127.0.0.1 and what its servicer saw."""

    def __init__(self, port: int, servicer: RecordingHealth) -> None:
        self.port = port
        self.servicer = servicer
        self.target = f"127.0.0.1:{port}"


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    """A PKI directory with a CA, the server identity and one client identity."""
    directory = tmp_path / "pki"
    pki.init_pki(directory, [SERVER, CLIENT])
    return directory


@pytest.fixture
async def server(pki_dir: Path) -> AsyncIterator[Server]:
    """A grpc.aio server with ``server_credentials`` on 127.0.0.1:0."""
    servicer = RecordingHealth()
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_secure_port("127.0.0.1:0", pki.server_credentials(pki_dir, SERVER))
    await grpc_server.start()
    yield Server(port, servicer)
    await grpc_server.stop(None)


async def _check(target: str, credentials: grpc.ChannelCredentials) -> Any:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


# --- who gets in --------------------------------------------------------------------------


async def test_ca_issued_client_is_accepted_and_servicer_sees_its_identity(
    server: Server, pki_dir: Path
) -> None:
    response = await _check(server.target, pki.channel_credentials(pki_dir, CLIENT))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert server.servicer.peers == [CLIENT]


async def test_client_without_certificate_is_refused(server: Server, pki_dir: Path) -> None:
    no_cert = grpc.ssl_channel_credentials(root_certificates=(pki_dir / "ca.pem").read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(server.target, no_cert)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.peers == []


async def test_client_with_certificate_from_another_ca_is_refused(
    server: Server, pki_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-pki"
    pki.init_pki(other, [CLIENT])  # same identity name, different CA
    # Trust the real CA (so only the server's check of the client can fail), present the
    # impostor's certificate.
    impostor = grpc.ssl_channel_credentials(
        root_certificates=(pki_dir / "ca.pem").read_bytes(),
        private_key=(other / f"{CLIENT}.key").read_bytes(),
        certificate_chain=(other / f"{CLIENT}.pem").read_bytes(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(server.target, impostor)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.peers == []


async def test_client_refuses_server_from_another_ca(server: Server, tmp_path: Path) -> None:
    other = tmp_path / "other-pki"
    pki.init_pki(other, [CLIENT])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(server.target, pki.channel_credentials(other, CLIENT))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def _check_via(security: Security, target: str, server_identity: str | None) -> Any:
    async with security.channel(target, server=server_identity) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_client_naming_the_server_reaches_it(
    server: Server, pki_dir: Path, replicas: int
) -> None:
    target = ",".join([server.target] * replicas)  # a replica list too
    response = await _check_via(Security(pki_dir, CLIENT), target, SERVER)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("tls_server_name", ["", "localhost"])
@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_client_naming_another_identity_refuses_the_server(
    server: Server,
    pki_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tls_server_name: str,
    replicas: int,
) -> None:
    # The server's certificate is the CA's, but it is SERVER's, not the one the client named;
    # neither a deployment's name override nor a replica list's first host may loosen that.
    monkeypatch.setenv(TLS_SERVER_NAME_ENV, tls_server_name)
    target = ",".join([server.target] * replicas)
    pki.ensure_identity(pki_dir, "registry")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check_via(Security(pki_dir, CLIENT), target, "registry")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.peers == []


async def test_a_client_naming_no_server_accepts_any_certificate_of_the_ca(
    server: Server, pki_dir: Path
) -> None:
    response = await _check_via(Security(pki_dir, CLIENT), server.target, None)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_peer_identity_is_none_on_insecure_channel() -> None:
    servicer = RecordingHealth()
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
    finally:
        await grpc_server.stop(None)
    assert servicer.peers == [None]


def test_peer_identity_works_with_a_sync_server(pki_dir: Path) -> None:
    """``peer_identity`` also reads the auth context of the synchronous API."""
    seen: list[str | None] = []

    class SyncHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        def Check(  # noqa: N802 - the gRPC method name
            self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            seen.append(pki.peer_identity(context))
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    with ThreadPoolExecutor(max_workers=2) as pool:
        grpc_server = grpc.server(pool)
        health_pb2_grpc.add_HealthServicer_to_server(SyncHealth(), grpc_server)
        port = grpc_server.add_secure_port("127.0.0.1:0", pki.server_credentials(pki_dir, SERVER))
        grpc_server.start()
        try:
            credentials = pki.channel_credentials(pki_dir, CLIENT)
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        finally:
            grpc_server.stop(None).wait()
    assert seen == [CLIENT]


# --- openssl as an outside client -----------------------------------------------------------


async def _s_client(port: int, *args: str, keep_stdin_open: bool) -> tuple[int, str]:
    """Run ``openssl s_client`` against the server; return its exit status and output."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    process = await asyncio.create_subprocess_exec(
        openssl,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-alpn",
        "h2",
        *args,
        # An open stdin makes s_client wait for the server to end the session, so a refusal
        # cannot be hidden by the client quitting first (TLS 1.3 finishes the client side of
        # the handshake before the server has checked the client certificate).
        stdin=asyncio.subprocess.PIPE if keep_stdin_open else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_openssl_without_client_certificate_fails_handshake(
    server: Server, pki_dir: Path, version: str
) -> None:
    code, output = await _s_client(
        server.port, version, "-CAfile", str(pki_dir / "ca.pem"), keep_stdin_open=True
    )
    assert code != 0, output


async def test_openssl_with_client_certificate_completes_handshake(
    server: Server, pki_dir: Path
) -> None:
    """The control for the test above: the same command with a certificate succeeds."""
    code, output = await _s_client(
        server.port,
        "-CAfile",
        str(pki_dir / "ca.pem"),
        "-cert",
        str(pki_dir / f"{CLIENT}.pem"),
        "-key",
        str(pki_dir / f"{CLIENT}.key"),
        "-verify_return_error",
        keep_stdin_open=False,
    )
    assert code == 0, output
    assert "Verify return code: 0 (ok)" in output


# --- the files ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_owner_only(pki_dir: Path) -> None:
    assert _mode(pki_dir) == 0o700
    keys = sorted(pki_dir.glob("*.key"))
    assert [k.name for k in keys] == ["ca.key", f"{SERVER}.key", f"{CLIENT}.key"]
    for key in keys:
        assert _mode(key) == 0o600, key


def test_init_pki_is_idempotent(pki_dir: Path) -> None:
    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in pki_dir.iterdir()}

    before = snapshot()
    pki.init_pki(pki_dir, [SERVER, CLIENT])
    pki.ensure_identity(pki_dir, CLIENT)
    assert snapshot() == before


def test_init_pki_adds_only_missing_identities(pki_dir: Path) -> None:
    ca_before = (pki_dir / "ca.pem").read_bytes()
    client_before = (pki_dir / f"{CLIENT}.pem").read_bytes()
    pki.init_pki(pki_dir, [CLIENT, "ua.13101"])
    assert (pki_dir / "ca.pem").read_bytes() == ca_before
    assert (pki_dir / f"{CLIENT}.pem").read_bytes() == client_before
    assert (pki_dir / "ua.13101.pem").exists()


def test_leaf_from_a_replaced_ca_is_reissued(pki_dir: Path) -> None:
    old_leaf = (pki_dir / f"{CLIENT}.pem").read_bytes()
    (pki_dir / "ca.pem").unlink()
    pki.ensure_identity(pki_dir, CLIENT)
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((pki_dir / f"{CLIENT}.pem").read_bytes())
    assert (pki_dir / f"{CLIENT}.pem").read_bytes() != old_leaf
    leaf.verify_directly_issued_by(ca)


def test_leaf_without_its_identity_name_is_reissued(pki_dir: Path) -> None:
    """A world made before leaves named their identity gets new leaves on its next start."""
    ca_key, ca_cert = pki._load_or_create_ca(pki_dir)
    old = x509.load_pem_x509_certificate((pki_dir / f"{CLIENT}.pem").read_bytes())
    names = [
        n
        for n in old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if not (isinstance(n, x509.DNSName) and n.value.endswith(".linkage.internal"))
    ]
    builder = x509.CertificateBuilder(
        old.subject,
        old.issuer,
        old.public_key(),
        old.serial_number,
        old.not_valid_before_utc,
        old.not_valid_after_utc,
    )
    for ext in old.extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(x509.SubjectAlternativeName(names), ext.critical)
        else:
            builder = builder.add_extension(ext.value, ext.critical)
    legacy = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    (pki_dir / f"{CLIENT}.pem").write_bytes(legacy)
    assert not pki._leaf_is_current(pki_dir, CLIENT, ca_cert)

    pki.init_pki(pki_dir, [SERVER, CLIENT])

    assert (pki_dir / f"{CLIENT}.pem").read_bytes() != legacy
    leaf = x509.load_pem_x509_certificate((pki_dir / f"{CLIENT}.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.server_name(CLIENT) in san.get_values_for_type(x509.DNSName)
    assert pki._leaf_is_current(pki_dir, CLIENT, ca_cert)


def test_leaf_certificate_contents(pki_dir: Path) -> None:
    leaf = x509.load_pem_x509_certificate((pki_dir / f"{CLIENT}.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    leaf.verify_directly_issued_by(ca)

    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == CLIENT
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:linkage:{CLIENT}"]
    assert san.get_values_for_type(x509.DNSName) == [f"{CLIENT}.linkage.internal", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature

    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    now = datetime.now(UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - now <= timedelta(days=366)
    assert ca.not_valid_after_utc - now > timedelta(days=3600)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


@pytest.mark.parametrize(
    "identity",
    [
        "network",
        "registry",
        "admin",
        "conformance",
        "platform.mynaportal",
        "org.city-13101",
        "ua.0",
        "bs.13101.juki",
        "staff-console.13101",
        "org." + "a" * 32,
    ],
)
def test_valid_identities_are_accepted(identity: str) -> None:
    assert pki.validate_identity(identity) == identity


@pytest.mark.parametrize(
    "identity",
    [
        "",
        "ca",
        "org",
        "org.",
        "org.-abc",
        "org.ABC",
        "org.a_b",
        "org.a.b",
        "org." + "a" * 33,
        "bs.13101",
        "bs.13101.juki.x",
        "platform.x/../../etc",
        "network ",
        "network\n",
        "urn:linkage:network",
        "staff.13101",
    ],
)
def test_invalid_identity_is_rejected(pki_dir: Path, identity: str) -> None:
    with pytest.raises(ValueError, match="invalid identity"):
        pki.ensure_identity(pki_dir, identity)
    with pytest.raises(ValueError, match="invalid identity"):
        pki.init_pki(pki_dir, [CLIENT, identity])
    with pytest.raises(ValueError, match="invalid identity"):
        pki.server_credentials(pki_dir, identity)


def test_credentials_for_a_missing_identity_name_the_fix(pki_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="linkage pki init"):
        pki.channel_credentials(pki_dir, "org.never-issued")


def test_key_readable_by_others_is_refused(pki_dir: Path) -> None:
    pki.server_credentials(pki_dir, SERVER)  # cached while still 0600
    key = pki_dir / f"{SERVER}.key"
    key.chmod(0o644)
    with pytest.raises(PermissionError, match="0600"):
        pki.server_credentials(pki_dir, SERVER)


def test_cli_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cli-pki"
    assert pki.main(["init", "--dir", str(directory), "--identity", SERVER]) == 0
    assert pki.main(["issue", "--dir", str(directory), CLIENT]) == 0
    assert pki.main(["issue", "--dir", str(directory), CLIENT]) == 0
    out = capsys.readouterr().out
    assert f"{CLIENT}: issued" in out
    assert f"{CLIENT}: already present" in out

    assert pki.main(["show", "--dir", str(directory)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(ca)")
    assert [line.split()[0] for line in lines[1:]] == [SERVER, CLIENT]
    assert all("expires" in line for line in lines)

    assert pki.main(["issue", "--dir", str(directory), "Bad Name"]) == 2
    assert "invalid identity" in capsys.readouterr().err
