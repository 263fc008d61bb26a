"""Helpers for the intermediate server's tests (imported by conftest and by tests).

- ``Clock``: one settable clock shared by the network and the platforms (expiry, retention).
- ``World``: a real network and intermediate server platforms, all over gRPC with mutual TLS,
  with the organizations registered in the directory; helpers to act as a unified address
  server (``ua``), as the registry (``enroll``), and to look into a platform's database.
- ``remote``: await a call that must fail and get its code, reason and field violations.
- Staff consoles (``console``: the staff, review and system management stubs as
  ``staff-console.<code>``), ``bearer`` metadata and ``signed_in`` (an account made by the
  platform operator, signed in).
- Builders of duplicate records for the five data items.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from linkage.db import Base, make_engine
from linkage.errors import RemoteError, remote_error
from linkage.rpc import Security
from linkage.v1 import (
    common_pb2,
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    review_pb2_grpc,
    staff_pb2,
    staff_pb2_grpc,
    system_management_pb2_grpc,
)
from server import app as server_app
from server.tenancy import TenantConfig
from simulator.network import app as network_app

if TYPE_CHECKING:
    UaStub = intermediate_server_pb2_grpc.IntermediateServerServiceAsyncStub
    NetStub = network_pb2_grpc.NetworkServiceAsyncStub
    StaffStub = staff_pb2_grpc.StaffServiceAsyncStub
    ReviewStub = review_pb2_grpc.ReviewServiceAsyncStub
    SystemStub = system_management_pb2_grpc.SystemManagementServiceAsyncStub
else:
    UaStub = Any
    NetStub = Any
    StaffStub = Any
    ReviewStub = Any
    SystemStub = Any

# A password good enough for the rules (12+ characters, varied, not the user name).
PASSWORD = "correct horse battery"

pb = intermediate_server_pb2
QS = common_pb2.QueryStatus

# The standard platforms: alpha hosts a municipality and the pension service, beta the
# regional association (so sakai → jps stays on one platform, osaka → sakai crosses two).
ALPHA = {"sakai": ["municipality"], "jps": ["pension_service"]}
BETA = {"osaka": ["regional_association"]}


@dataclass(frozen=True)
class Console:
    """A staff console (職員端末) of one organization: its three services' stubs."""

    staff: StaffStub
    review: ReviewStub
    system: SystemStub


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying a session."""
    return (("authorization", f"Bearer {token}"),)


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


async def remote(call: Awaitable[Any]) -> RemoteError:
    """Await a call that must fail; its code, reason and field violations."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return remote_error(error)
    raise AssertionError("the call succeeded")


_serials = itertools.count(1)


@dataclass
class World:
    """The network and the platforms of a test, and who hosts which organization."""

    pki_dir: Path
    tmp_path: Path
    clock: Clock
    network: network_app.App
    database_url: Callable[[str], str]  # a fresh migrated database per component
    platforms: dict[str, server_app.App] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # org code → platform name
    engines: dict[str, Engine] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    stubs: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    # --- starting -----------------------------------------------------------------------------

    async def start_platform(
        self, name: str, tenants: dict[str, list[str]], **overrides: Any
    ) -> server_app.App:
        """Start platform ``name`` hosting ``tenants`` (code → capacities) and register them."""
        url = self.database_url(f"platform-{name}")
        config = server_app.Config(
            platform=name,
            database_url=url,
            security=Security(self.pki_dir, f"platform.{name}"),
            data_dir=self.tmp_path / f"platform-{name}",
            network_address=self.network.address,
            tenants=[TenantConfig(code, caps) for code, caps in tenants.items()],
            migrate=False,
            clock=self.clock,
            network_timeout=10.0,
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        started = await server_app.start(config)
        self.platforms[name] = started
        self.engines[name] = make_engine(url)
        for code, capacities in tenants.items():
            self.hosts[code] = name
            await self.register(started, code, capacities)
        return started

    async def register(self, platform: server_app.App, code: str, capacities: list[str]) -> None:
        keys = [
            common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key)
            for k in platform.tenant_public_keys(code)
        ]
        await self.network.register_organization(
            network_pb2.Organization(
                code=code,
                display_name=code.upper(),
                capacities=capacities,
                endpoint=platform.address,
                signing_keys=keys,
            )
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)
        for platform in self.platforms.values():
            await platform.close(grace=0)
        for engine in self.engines.values():
            engine.dispose()

    # --- acting as the organizations' other systems --------------------------------------------

    def platform_of(self, code: str) -> server_app.App:
        return self.platforms[self.hosts[code]]

    def ua(self, code: str, *, platform: str | None = None, identity: str | None = None) -> UaStub:
        """The IntermediateServerService of ``code``'s platform, called as ``ua.<code>``."""
        target = self.platforms[platform or self.hosts[code]]
        key = ("ua", target.address, identity or f"ua.{code}")
        if key not in self.stubs:
            channel = Security(self.pki_dir, key[2]).channel(target.address)
            self.channels.append(channel)
            self.stubs[key] = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
        stub: UaStub = self.stubs[key]
        return stub

    def net(self, identity: str) -> NetStub:
        key = ("net", self.network.address, identity)
        if key not in self.stubs:
            channel = Security(self.pki_dir, identity).channel(self.network.address)
            self.channels.append(channel)
            self.stubs[key] = network_pb2_grpc.NetworkServiceStub(channel)
        stub: NetStub = self.stubs[key]
        return stub

    def console(
        self, code: str, *, identity: str | None = None, platform: str | None = None
    ) -> Console:
        """The staff services of ``code``'s platform, called as ``staff-console.<code>``."""
        target = self.platforms[platform or self.hosts[code]]
        key = ("console", target.address, identity or f"staff-console.{code}")
        if key not in self.stubs:
            channel = Security(self.pki_dir, key[2]).channel(target.address)
            self.channels.append(channel)
            self.stubs[key] = Console(
                staff=staff_pb2_grpc.StaffServiceStub(channel),
                review=review_pb2_grpc.ReviewServiceStub(channel),
                system=system_management_pb2_grpc.SystemManagementServiceStub(channel),
            )
        console: Console = self.stubs[key]
        return console

    async def sign_in(
        self, code: str, username: str, password: str = PASSWORD
    ) -> staff_pb2.SignInResponse:
        response: staff_pb2.SignInResponse = await self.console(code).staff.SignIn(
            staff_pb2.SignInRequest(
                parent=f"organizations/{code}", username=username, password=password
            )
        )
        return response

    async def signed_in(self, code: str, username: str, *roles: str) -> str:
        """A session token of a new account with ``roles`` (made by the platform operator)."""
        await self.platform_of(code).create_staff_account(
            code, username, PASSWORD, roles, must_change=False
        )
        return (await self.sign_in(code, username)).session_token

    async def enroll(self, code: str, unified_number: str, resident_code: str) -> None:
        """The code acquisition flow: the registry hands a serial to the network, the unified
        address server passes it to its intermediate server, which obtains the code."""
        serial = f"serial-{next(_serials):012d}-{code}"
        await self.net("registry").RegisterProcessingSerial(
            network_pb2.RegisterProcessingSerialRequest(
                processing_serial=serial, resident_code=resident_code, organization=code
            )
        )
        await self.ua(code).AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(
                parent=f"organizations/{code}",
                unified_number=unified_number,
                processing_serial=serial,
            )
        )

    async def import_records(
        self,
        code: str,
        records: Sequence[pb.DuplicateRecord],
        *,
        import_id: str = "import-1",
        chunk: int = 1000,
    ) -> pb.ImportDuplicatesResponse:
        async def chunks() -> AsyncIterator[pb.ImportDuplicatesRequest]:
            for start in range(0, max(len(records), 1), chunk):
                yield pb.ImportDuplicatesRequest(
                    parent=f"organizations/{code}",
                    import_id=import_id,
                    records=records[start : start + chunk],
                    business_system="tax",
                )

        response: pb.ImportDuplicatesResponse = await self.ua(code).ImportDuplicates(chunks())
        return response

    async def submit(self, code: str, **spec: Any) -> pb.QueryResult:
        response = await self.ua(code).SubmitQuery(
            pb.SubmitQueryRequest(parent=f"organizations/{code}", query=pb.QuerySpec(**spec))
        )
        result: pb.QueryResult = response.result
        return result

    # --- looking into a platform's database ---------------------------------------------------

    def count(self, platform: str, table: str, where: str = "", **params: Any) -> int:
        sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")  # noqa: S608
        with self.engines[platform].connect() as connection:
            value = connection.execute(text(sql), params).scalar_one()
        return int(value)

    def records(self, code: str, **match: str) -> list[dict[str, Any]]:
        """The access records of ``server:<code>`` matching the given columns."""
        from linkage.records.models import RECORDS

        statement = select(RECORDS).where(RECORDS.c.ledger == f"server:{code}")
        for column, value in match.items():
            statement = statement.where(RECORDS.c[column] == value)
        statement = statement.order_by(RECORDS.c.seq)
        with self.engines[self.hosts[code]].connect() as connection:
            return [dict(row._mapping) for row in connection.execute(statement)]

    def table_counts(self, platform: str) -> dict[str, int]:
        """Row counts of every server table and the ledger (to prove nothing changed)."""
        names = [n for n in Base.metadata.tables if n.startswith("server_")] + ["access_records"]
        return {name: self.count(platform, name) for name in names}


# --- duplicate builders ---------------------------------------------------------------------------


def local_tax(
    unified_number: str,
    *,
    fiscal_year: int = 2026,
    income: int = 2_400_000,
    effective_from: str = "",
    effective_to: str = "",
    municipality: str = "sakai",
    flagged: bool = False,
) -> pb.DuplicateRecord:
    return pb.DuplicateRecord(
        unified_number=unified_number,
        value=common_pb2.DuplicateValue(
            data_item="local_tax",
            content=common_pb2.DataItemContent(
                local_tax=common_pb2.LocalTax(
                    fiscal_year=fiscal_year,
                    assessing_municipality=municipality,
                    total_income=income,
                    taxable_income=income // 2,
                    per_capita_levy=5_000,
                    income_levy=income // 20,
                )
            ),
            effective_from=effective_from or f"{fiscal_year}-06-01",
            effective_to=effective_to,
        ),
        auto_response_disabled=flagged,
    )


def pension(
    unified_number: str,
    *,
    fiscal_year: int = 2026,
    amount: int = 1_200_000,
    effective_from: str = "2026-04-01",
    effective_to: str = "",
    flagged: bool = False,
) -> pb.DuplicateRecord:
    return pb.DuplicateRecord(
        unified_number=unified_number,
        value=common_pb2.DuplicateValue(
            data_item="pension_benefit",
            content=common_pb2.DataItemContent(
                pension_benefit=common_pb2.PensionBenefit(
                    fiscal_year=fiscal_year,
                    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_BASIC,
                    annual_amount=amount,
                    payer="jps",
                )
            ),
            effective_from=effective_from,
            effective_to=effective_to,
        ),
        auto_response_disabled=flagged,
    )


def pension_query(query_id: str, unified_number: str, **overrides: Any) -> dict[str, Any]:
    """A query of sakai (a municipality) for a pension benefit at jps (table2:82)."""
    spec: dict[str, Any] = {
        "query_id": query_id,
        "requester_capacity": "municipality",
        "procedure": "table2:82",
        "provider": "jps",
        "data_items": ["pension_benefit"],
        "unified_number": unified_number,
        "on_date": "2026-07-01",
        "business_system": "kouki",
    }
    spec.update(overrides)
    return spec


def tax_query(query_id: str, unified_number: str, **overrides: Any) -> dict[str, Any]:
    """A query of osaka (the regional association) for local tax at sakai (table2:80)."""
    spec: dict[str, Any] = {
        "query_id": query_id,
        "requester_capacity": "regional_association",
        "procedure": "table2:80",
        "provider": "sakai",
        "data_items": ["local_tax"],
        "unified_number": unified_number,
        "on_date": "2026-07-01",
        "business_system": "eligibility",
    }
    spec.update(overrides)
    return spec


def values_of(result: pb.QueryResult) -> list[common_pb2.DuplicateValue]:
    return list(result.values)


def statuses(results: Iterable[pb.QueryResult]) -> dict[str, str]:
    return {r.query_id: QS.Name(r.status) for r in results}
