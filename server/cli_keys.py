"""``linkage keys``: the platform operator's commands for a tenant's organization key ring.

Subcommands::

    linkage keys rotate --tenant CODE --network HOST:PORT [--platform NAME] [--data-dir DIR]
                        [--pki-dir DIR | --insecure]
    linkage keys list   --tenant CODE [--platform NAME] [--data-dir DIR]

``rotate`` is the one step of a signing-key rotation (署名鍵の更新, ``server.key_rotation``):
the new key is published in the network's directory as the tenant (its ``org.<code>``
certificate from ``--pki-dir``), then made current in the tenant's ring, which the platform's
running servers (every replica) pick up at their next signature; the previous key stays valid
at the network for its overlap window. It may run while the platform serves. If the network
refuses, cannot be reached or does not answer, the ring keeps signing with its current key and
keeps the new one pending, which the next run publishes and makes current: run it again soon
(an unanswered call may have reached the network, which then counts down the current key's
overlap window). ``list`` shows the ring's generations (ids and dates only).

``--data-dir`` and ``--platform`` are those the platform was started with (``linkage serve
server``); the ring is ``DATA_DIR/keys/platform-NAME/keys/org-CODE.keyring.json``. Exit codes:
0 done, 1 the network refused or did not answer, 2 bad usage.

Must never: print or log private key material (key ids only), or create a key ring: a tenant
whose ring does not exist is a usage error (a typo must not make a new organization key).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from linkage.cli import env, parse_args

if TYPE_CHECKING:
    from linkage.keys import KeyRing, PublicKeys

EXIT_OK = 0
EXIT_NETWORK = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad input; printed without a traceback, exit 2."""


def _ring_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, help="organization code of the tenant")
    parser.add_argument(
        "--platform", default=env("PLATFORM", "municipal"), help="platform name (as served)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("DATA_DIR", "data")),
        help="the data directory the platform was started with",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage keys",
        description="A tenant's organization signing keys (operator commands).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rotate = sub.add_parser(
        "rotate", help="publish a new signing key at the network, then make it current"
    )
    _ring_options(rotate)
    rotate.add_argument(
        "--network", default=env("NETWORK_ADDRESS"), help="host:port of the network"
    )
    rotate.add_argument("--pki-dir", type=Path, default=Path(env("PKI_DIR", "data/pki")))
    rotate.add_argument("--insecure", action="store_true", help="plaintext, debugging only")
    _ring_options(sub.add_parser("list", help="the ring's key generations (ids and dates)"))
    return parser


def main(argv: list[str]) -> int:
    """Run ``linkage keys`` with ``argv``; returns the exit code."""
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse already printed
        return args
    from linkage.errors import LinkageError

    try:
        ring = _ring(args)
        if args.command == "list":
            _list(ring)
            return EXIT_OK
        return _rotate(args, ring)
    except _UsageError as exc:
        print(f"linkage keys: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LinkageError as exc:
        print(
            f"linkage keys: the new key was not confirmed by the network: {exc.reason}: "
            f"{exc.message}. The ring still signs with its current key and keeps the new one "
            "pending; the network may have taken it all the same (a lost answer), and then "
            "counts down the current key's overlap window (24 h by default): run the command "
            "again now, it finishes with the same key",
            file=sys.stderr,
        )
        return EXIT_NETWORK


def _ring(args: argparse.Namespace) -> KeyRing:
    from linkage.keys import KeyRing
    from server.tenancy import valid_code

    if not valid_code(args.tenant):
        raise _UsageError(f"--tenant: not an organization code: {args.tenant!r}")
    directory = args.data_dir / "keys" / f"platform-{args.platform}" / "keys"
    try:
        return KeyRing.load(directory, f"org-{args.tenant}")
    except FileNotFoundError:
        raise _UsageError(
            f"no key ring of tenant {args.tenant!r} in {directory} (check --data-dir, "
            "--platform and --tenant: the ring is made when the platform first starts)"
        ) from None
    except (PermissionError, ValueError) as error:
        raise _UsageError(str(error)) from None


def _list(ring: KeyRing) -> None:
    pending = (
        " (a rotation did not finish: run `linkage keys rotate` now; the network may already "
        "count down the current key's overlap window)"
    )
    print(f"{ring.name}{pending if ring.pending_path.exists() else ''}")
    for index, key in enumerate(ring.keys):
        state = "current " if index == 0 else "previous"
        print(f"  {state}  {key.key_id}  created {key.created_at.isoformat(timespec='seconds')}")


def _rotate(args: argparse.Namespace, ring: KeyRing) -> int:
    from linkage import pki
    from server.key_rotation import rotate_signing_key

    if not args.network:
        raise _UsageError("--network: the network's host:port is required to publish the key")
    pki_dir = None if args.insecure else args.pki_dir
    if pki_dir is not None:
        try:
            pki.channel_credentials(pki_dir, f"org.{args.tenant}")
        except (OSError, ValueError) as error:
            raise _UsageError(f"--pki-dir: no certificate for org.{args.tenant}: {error}") from None

    def publish(key: PublicKeys) -> None:
        asyncio.run(_publish(pki_dir, args.network, args.tenant, key))

    rotation = rotate_signing_key(ring, publish)
    resumed = " (finished the rotation an earlier run started)" if rotation.resumed else ""
    print(
        f"rotated {args.tenant}: current key {rotation.key_id}, previous "
        f"{rotation.previous_key_id} (valid at the network for its overlap window){resumed}"
    )
    return EXIT_OK


async def _publish(pki_dir: Path | None, network: str, tenant: str, key: PublicKeys) -> None:
    from server.network_client import GrpcNetwork

    client = GrpcNetwork(pki_dir, network, [tenant], timeout=10.0)
    try:
        await client.rotate_signing_key(tenant, key)
    finally:
        await client.close()
