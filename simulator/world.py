"""The world harness: every system of the simulation started in one process, wired together.

Owns the cast (which organizations exist, their capacities, platforms and business systems)
and the start-up order: PKI → network → registry → intermediate server platforms → directory
registration → unified address servers. Each part is a real gRPC server on its own port with
mutual TLS, exactly as `linkage world up` runs them as separate processes; only the event loop
is shared. Tests, the demo and the benchmark build on it.

It must never reach into a system's storage: everything after start-up goes over gRPC (the
directory registration uses the network's in-process operator call, the same as an admin RPC).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from linkage import db
from linkage.rpc import Security

if TYPE_CHECKING:
    import grpc

    import server.app
    import simulator.network.app
    import simulator.registry.app
    import unified_address.app
    from linkage.v1 import unified_address_pb2_grpc
    from unified_address.scope import BusinessSystemScope


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """A business system (既存システム) of an organization and its scope."""

    system: str
    capacity: str
    query_procedures: frozenset[str] = frozenset()
    query_items: frozenset[str] = frozenset()
    push_items: frozenset[str] = frozenset()

    def scope(self) -> BusinessSystemScope:
        from unified_address.scope import BusinessSystemScope

        return BusinessSystemScope(
            system=self.system,
            capacity=self.capacity,
            query_procedures=self.query_procedures,
            query_items=self.query_items,
            push_items=self.push_items,
        )


@dataclass(frozen=True, slots=True)
class OrganizationSpec:
    """An organization of the world: who it is, what capacities it acts in, where it is hosted."""

    code: str
    display_name: str
    capacities: tuple[str, ...]
    platform: str
    local_government_code: str = ""
    systems: tuple[SystemSpec, ...] = ()


def _fs(*items: str) -> frozenset[str]:
    return frozenset(items)


def _municipality(code: str, name: str, lg_code: str) -> OrganizationSpec:
    return OrganizationSpec(
        code=code,
        display_name=name,
        # A municipality also runs national health insurance: it acts as a medical insurer too.
        capacities=("municipality", "medical_insurer"),
        platform="municipal",
        local_government_code=lg_code,
        systems=(
            SystemSpec("zeimu", "municipality", push_items=_fs("local_tax")),
            SystemSpec("juki", "municipality", push_items=_fs("resident_record")),
        ),
    )


SAKAI = OrganizationSpec(
    code="sakai",
    display_name="堺市",
    capacities=("municipality", "medical_insurer"),
    platform="municipal",
    local_government_code="271403",
    systems=(
        # 後期高齢者医療システム: premium collection (第八十二項), special collection notices.
        # Its scope also lists local_tax: an over-broad scope the permission list still stops.
        SystemSpec(
            "kouki",
            "municipality",
            query_procedures=_fs("table2:82"),
            query_items=_fs("pension_benefit", "late_stage_medical_premium", "local_tax"),
            push_items=_fs("special_collection_notice"),
        ),
        SystemSpec("zeimu", "municipality", push_items=_fs("local_tax")),
        SystemSpec("juki", "municipality", push_items=_fs("resident_record")),
    ),
)

REGIONAL_ASSOCIATION = OrganizationSpec(
    code="osaka-kouiki",
    display_name="大阪府後期高齢者医療広域連合",
    capacities=("regional_association",),
    platform="insurers",
    systems=(
        # 広域連合の標準システム: benefits and premiums (第八十項) from municipalities' tax data.
        SystemSpec(
            "kouki",
            "regional_association",
            query_procedures=_fs("table2:80"),
            query_items=_fs("local_tax", "resident_record"),
            push_items=_fs("late_stage_medical_premium"),
        ),
    ),
)

PENSION_SERVICE = OrganizationSpec(
    code="jps",
    display_name="日本年金機構",
    # JPS acts for the Minister (厚生労働大臣) in the pension affairs delegated to it (国民年金法
    # 第109条の4, 厚生年金保険法 第100条の4): it queries under 第八十三項 in the mhlw capacity.
    capacities=("pension_service", "mhlw"),
    platform="jps",
    systems=(
        SystemSpec(
            "nenkin",
            "mhlw",
            query_procedures=_fs("table2:83"),
            query_items=_fs("special_collection_notice"),
            push_items=_fs("pension_benefit"),
        ),
    ),
)

DEFAULT_ORGANIZATIONS: tuple[OrganizationSpec, ...] = (
    SAKAI,
    _municipality("osaka", "大阪市", "271004"),
    _municipality("toyonaka", "豊中市", "272035"),
    _municipality("suita", "吹田市", "272051"),
    REGIONAL_ASSOCIATION,
    PENSION_SERVICE,
)


@dataclass
class WorldConfig:
    """Where the world keeps its files and how its parts are secured and stored."""

    root: Path
    organizations: Sequence[OrganizationSpec] = DEFAULT_ORGANIZATIONS
    secure: bool = True
    # Maps a component name ("network", "registry", "platform-municipal", "ua-sakai") to a
    # database URL; default: an SQLite file per component under root/db.
    database_url: Callable[[str], str] | None = None
    result_retention: timedelta = timedelta(hours=24)
    _urls: dict[str, str] = field(default_factory=dict, repr=False)

    def url(self, component: str) -> str:
        """The database URL of a component, made once and then remembered."""
        if component not in self._urls:
            if self.database_url is not None:
                self._urls[component] = self.database_url(component)
            else:
                (self.root / "db").mkdir(parents=True, exist_ok=True)
                self._urls[component] = db.sqlite_url(self.root / "db" / f"{component}.sqlite")
        return self._urls[component]

    @property
    def pki_dir(self) -> Path | None:
        return self.root / "pki" if self.secure else None

    def platforms(self) -> list[str]:
        return sorted({org.platform for org in self.organizations})

    def identities(self) -> list[str]:
        ids = ["network", "registry", "admin"]
        ids += [f"platform.{p}" for p in self.platforms()]
        for org in self.organizations:
            ids += [f"org.{org.code}", f"ua.{org.code}", f"staff-console.{org.code}"]
            ids += [f"bs.{org.code}.{s.system}" for s in org.systems]
        return ids


@dataclass
class World:
    """A running world: handles to every app, and client channels for business systems."""

    config: WorldConfig
    network: simulator.network.app.App
    registry: simulator.registry.app.App
    platforms: dict[str, server.app.App]
    unified_address: dict[str, unified_address.app.App]
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def organization(self, code: str) -> OrganizationSpec:
        return next(o for o in self.config.organizations if o.code == code)

    def platform_of(self, code: str) -> server.app.App:
        return self.platforms[self.organization(code).platform]

    def security(self, identity: str) -> Security:
        return Security(self.config.pki_dir, identity)

    def channel(self, identity: str, address: str) -> grpc.aio.Channel:
        """A channel presenting ``identity``, closed with the world."""
        channel = self.security(identity).channel(address)
        self._channels.append(channel)
        return channel

    def business_system(
        self, org: str, system: str
    ) -> unified_address_pb2_grpc.UnifiedAddressServiceAsyncStub:
        """A client stub for business system ``system`` of ``org`` at its unified address server."""
        from linkage.v1 import unified_address_pb2_grpc

        channel = self.channel(f"bs.{org}.{system}", self.unified_address[org].address)
        # An aio channel makes the generated stub asynchronous (the typed stubs know this).
        return unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
        for ua in self.unified_address.values():
            await ua.close()
        for platform in self.platforms.values():
            await platform.close()
        await self.registry.close()
        await self.network.close()


def init_pki(config: WorldConfig) -> None:
    """Create the CA and every certificate the world needs (idempotent)."""
    if config.pki_dir is not None:
        from linkage import pki

        pki.init_pki(config.pki_dir, config.identities())


async def start_world(config: WorldConfig) -> World:
    """Start every system in order and register the organizations in the directory."""
    await asyncio.to_thread(init_pki, config)
    network = await _start_network(config)
    registry = await _start_registry(config, network.address)
    platforms = {
        name: await _start_platform(config, name, network.address) for name in config.platforms()
    }
    await _register_organizations(config, network, platforms)
    uas = {
        org.code: await _start_unified_address(
            config, org, platforms[org.platform].address, registry.address
        )
        for org in config.organizations
    }
    return World(config, network, registry, platforms, uas)


async def _start_network(config: WorldConfig) -> simulator.network.app.App:
    from simulator.network import app

    return await app.start(
        app.Config(
            database_url=config.url("network"),
            security=Security(config.pki_dir, "network"),
            data_dir=config.root / "keys" / "network",
        )
    )


async def _start_registry(config: WorldConfig, network_address: str) -> simulator.registry.app.App:
    from simulator.registry import app

    return await app.start(
        app.Config(
            database_url=config.url("registry"),
            security=Security(config.pki_dir, "registry"),
            data_dir=config.root / "keys" / "registry",
            network_address=network_address,
        )
    )


async def _start_platform(config: WorldConfig, name: str, network_address: str) -> server.app.App:
    from server import app
    from server.tenancy import TenantConfig

    tenants = [
        TenantConfig(code=org.code, capacities=tuple(org.capacities))
        for org in config.organizations
        if org.platform == name
    ]
    return await app.start(
        app.Config(
            platform=name,
            database_url=config.url(f"platform-{name}"),
            security=Security(config.pki_dir, f"platform.{name}"),
            data_dir=config.root / "keys" / f"platform-{name}",
            network_address=network_address,
            tenants=tenants,
            result_retention=config.result_retention,
        )
    )


async def _register_organizations(
    config: WorldConfig,
    network: simulator.network.app.App,
    platforms: dict[str, server.app.App],
) -> None:
    from linkage.v1 import common_pb2, network_pb2

    for org in config.organizations:
        platform = platforms[org.platform]
        keys = [
            common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key)
            for k in platform.tenant_public_keys(org.code)
        ]
        await network.register_organization(
            network_pb2.Organization(
                code=org.code,
                display_name=org.display_name,
                capacities=list(org.capacities),
                endpoint=platform.address,
                signing_keys=keys,
                local_government_code=org.local_government_code,
            )
        )


async def _start_unified_address(
    config: WorldConfig, org: OrganizationSpec, server_address: str, registry_address: str
) -> unified_address.app.App:
    from unified_address import app

    return await app.start(
        app.Config(
            organization=org.code,
            database_url=config.url(f"ua-{org.code}"),
            security=Security(config.pki_dir, f"ua.{org.code}"),
            data_dir=config.root / "keys" / f"ua-{org.code}",
            server_address=server_address,
            registry_address=registry_address,
            business_systems=[s.scope() for s in org.systems],
            server_identity=f"platform.{org.platform}",
        )
    )


def organizations_by_code(specs: Iterable[OrganizationSpec]) -> dict[str, OrganizationSpec]:
    """Index organization specs by code."""
    return {spec.code: spec for spec in specs}
