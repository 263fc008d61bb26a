"""The local certificate authority and the mutual-TLS credentials of every process.

Owns the PKI directory: ``ca.key``/``ca.pem`` (the local CA, 10 years) and, per identity,
``<identity>.key``/``<identity>.pem`` (a leaf, 1 year, EC P-256, usable as TLS client and
server). An identity names who a process is: it is the certificate's Common Name and a SAN URI
``urn:linkage:<identity>`` and SAN DNS ``<identity>.linkage.internal`` (``server_name``), which a
client that names the server it means to reach checks (``linkage.rpc.Security.channel(...,
server=...)``), so another identity's certificate of the same CA does not pass for it. Every
leaf also carries SAN DNS ``localhost`` and IP ``127.0.0.1`` so servers are reached at 127.0.0.1
with no name override by clients that name no server. Identity grammar
(``validate_identity``)::

    network | registry | admin | conformance | platform.<name> | org.<code> | ua.<code>
    | bs.<code>.<system> | staff-console.<code>        (each part: [a-z0-9][a-z0-9-]{0,31})

Public API::

    validate_identity(identity: str) -> str                      # ValueError if invalid
    init_pki(directory: Path, identities: Iterable[str] = ()) -> None
    ensure_identity(directory: Path, identity: str) -> None
    server_name(identity: str) -> str                            # "<identity>.linkage.internal"
    server_credentials(directory: Path, identity: str) -> grpc.ServerCredentials
    channel_credentials(directory: Path, identity: str) -> grpc.ChannelCredentials
    peer_identity(context) -> str | None
    list_identities(directory: Path) -> list[tuple[str, datetime]]
    main(argv: list[str]) -> int                                  # ``linkage pki``

Servers always require a client certificate issued by the CA; clients trust only the CA. Which
identity may call what is the caller's business (``peer_identity`` gives it the verified CN).

It must never log or print private keys, never write one readable by anyone but the owner, never
issue a certificate for a string outside the identity grammar, and never be imported by
``linkage/__init__.py`` (it pulls in ``cryptography`` and ``grpc``).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linkage.keys import exclusive_lock, private_dir, read_private_file, write_private_file

if TYPE_CHECKING:
    import grpc.aio

__all__ = [
    "channel_credentials",
    "ensure_identity",
    "init_pki",
    "list_identities",
    "main",
    "peer_identity",
    "server_credentials",
    "server_name",
    "validate_identity",
]

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
# A leaf this close to expiry is reissued by init_pki/ensure_identity.
RENEW_BEFORE = timedelta(days=14)
# Backdate notBefore a little so a peer whose clock lags slightly still accepts a fresh cert.
CLOCK_SKEW = timedelta(minutes=5)
ORGANIZATION = "linkage simulation"
# Every leaf's identity DNS name ends so; identities are dot-joined valid DNS labels.
SERVER_NAME_SUFFIX = ".linkage.internal"
CA_NAME = "linkage local CA"

_PART = r"[a-z0-9][a-z0-9-]{0,31}"
_IDENTITY_RE = re.compile(
    rf"network|registry|admin|conformance"
    rf"|(?:platform|org|ua|staff-console)\.{_PART}"
    rf"|bs\.{_PART}\.{_PART}"
)


def validate_identity(identity: str) -> str:
    """Return ``identity`` if it follows the grammar, else raise ``ValueError``."""
    if not isinstance(identity, str) or not _IDENTITY_RE.fullmatch(identity):
        raise ValueError(f"invalid identity {identity!r}")
    return identity


def server_name(identity: str) -> str:
    """The DNS name in ``identity``'s certificate that binds a TLS peer to that identity."""
    return f"{validate_identity(identity)}{SERVER_NAME_SUFFIX}"


# --- issuing --------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first, certificate last: the certificate's presence marks a complete pair.
    write_private_file(directory / "ca.key", _key_pem(key))
    write_private_file(
        directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )


def _issue_leaf(
    directory: Path, identity: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(identity))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"urn:linkage:{identity}"),
                    x509.DNSName(server_name(identity)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private_file(directory / f"{identity}.key", _key_pem(key))
    write_private_file(
        directory / f"{identity}.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )


def _leaf_is_current(directory: Path, identity: str, ca_cert: x509.Certificate) -> bool:
    """A leaf is kept if its pair is complete, signed by this CA, matching, not expiring and
    names its identity's DNS name (leaves issued before that name existed are reissued)."""
    cert_path, key_path = directory / f"{identity}.pem", directory / f"{identity}.key"
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(read_private_file(key_path), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):  # unreadable, or not this CA's: reissue
        return False
    same_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (
        same_key
        and cert.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
        and _names_identity(cert, identity)
    )


def _names_identity(cert: x509.Certificate, identity: str) -> bool:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return server_name(identity) in names.get_values_for_type(x509.DNSName)


def _load_or_create_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not ((directory / "ca.pem").exists() and (directory / "ca.key").exists()):
        _create_ca(directory)
    ca_key = serialization.load_pem_private_key(read_private_file(directory / "ca.key"), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'} is not an EC private key")
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return ca_key, ca_cert


def _ensure(directory: Path, identities: Iterable[str]) -> list[str]:
    """Create what is missing; return the identities (re)issued. Caller validated names."""
    private_dir(directory)
    issued = []
    with exclusive_lock(directory / ".lock"):
        ca_key, ca_cert = _load_or_create_ca(directory)
        for identity in identities:
            if not _leaf_is_current(directory, identity, ca_cert):
                _issue_leaf(directory, identity, ca_key, ca_cert)
                issued.append(identity)
    return issued


def init_pki(directory: Path, identities: Iterable[str] = ()) -> None:
    """Create the CA if missing, then a certificate for each identity not yet present.

    Idempotent: a second call with the same identities changes no file. A leaf that is missing
    half its pair, was issued by another CA, expires within ``RENEW_BEFORE`` or lacks its
    identity's DNS name (issued by an older version) is reissued.
    """
    wanted = [validate_identity(identity) for identity in identities]  # validate all first
    _ensure(directory, wanted)


def ensure_identity(directory: Path, identity: str) -> None:
    """Issue a certificate for ``identity`` if it has none (creating the CA if needed)."""
    _ensure(directory, [validate_identity(identity)])


# --- credentials ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _cached_read(path: str, inode: int, mtime_ns: int, mode: int, secret: bool) -> bytes:
    # Keyed on inode and mtime too, so a reissued file (atomic rename) is read afresh, and on
    # the mode, so a key chmod-ed open to others is refused again rather than served from cache.
    del inode, mtime_ns, mode
    return read_private_file(Path(path)) if secret else Path(path).read_bytes()


def _pem(path: Path, *, secret: bool = False) -> bytes:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: run `linkage pki init --dir {path.parent} --identity ...`"
        ) from None
    return _cached_read(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_mode, secret)


def _identity_pems(directory: Path, identity: str) -> tuple[bytes, bytes, bytes]:
    validate_identity(identity)
    return (
        _pem(directory / "ca.pem"),
        _pem(directory / f"{identity}.key", secret=True),
        _pem(directory / f"{identity}.pem"),
    )


def server_credentials(directory: Path, identity: str) -> grpc.ServerCredentials:
    """TLS server credentials that require a client certificate issued by the CA."""
    ca, key, cert = _identity_pems(directory, identity)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(directory: Path, identity: str) -> grpc.ChannelCredentials:
    """TLS channel credentials that present ``identity``'s certificate and trust only the CA."""
    ca, key, cert = _identity_pems(directory, identity)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def peer_identity(
    context: grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext,
) -> str | None:
    """The verified client certificate's CN, or ``None`` (insecure channel, no valid identity).

    gRPC only fills ``x509_common_name`` after verifying the chain, and our servers require
    client certificates, so the value is authenticated; it is checked against the grammar again
    so a malformed name can never reach authorization code.
    """
    values: Any = context.auth_context().get("x509_common_name")
    if not values:
        return None
    # The auth context maps to a list of bytes (grpc-stubs types the sync one as bare bytes).
    raw = values if isinstance(values, bytes) else next(iter(values), b"")
    try:
        return validate_identity(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


# --- inspection and CLI ---------------------------------------------------------------------


def list_identities(directory: Path) -> list[tuple[str, datetime]]:
    """Every issued identity with its certificate's expiry, sorted; the CA is not included."""
    found = []
    for path in sorted(directory.glob("*.pem")):
        if path.name == "ca.pem":
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        found.append((path.name.removesuffix(".pem"), cert.not_valid_after_utc))
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkage pki", description="Local CA and certificates.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the CA and the given identities if missing")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--identity", action="append", default=[], metavar="ID")
    issue = commands.add_parser("issue", help="issue a certificate for one identity if missing")
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("identity", metavar="ID")
    show = commands.add_parser("show", help="list the CA and identities with their expiry")
    show.add_argument("--dir", type=Path, required=True)
    return parser


def main(argv: list[str]) -> int:
    """``linkage pki init|issue|show``; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "show":
            return _show(args.dir)
        names = args.identity if args.command == "init" else [args.identity]
        issued = _ensure(args.dir, [validate_identity(name) for name in names])
    except (ValueError, OSError) as exc:
        print(f"linkage pki: error: {exc}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {'issued' if name in issued else 'already present'}")
    return 0


def _show(directory: Path) -> int:
    ca_path = directory / "ca.pem"
    if not ca_path.exists():
        print(f"linkage pki: error: no CA in {directory}", file=sys.stderr)
        return 1
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    print(f"{'(ca) ' + CA_NAME:<40} expires {ca.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    for identity, expiry in list_identities(directory):
        print(f"{identity:<40} expires {expiry:%Y-%m-%dT%H:%M:%SZ}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
