"""Hostile messages for any RPC, built from the proto descriptors, and what they may change.

``requests(method)`` is a hypothesis strategy of what a hostile or broken client sends to one
method: messages with random values of each field's type (wrong enum numbers, huge and empty
strings, unicode, negative numbers, deep and absent sub-messages, long repeated fields, values
that look almost right) or random bytes that may not parse at all, one or several for a
streaming request. ``RowCounts`` reads how many rows each table of each system's database
holds, so a test can check that a refused call changed nothing.

Nothing here knows a service: a new RPC is covered when its proto is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st
from sqlalchemy import Engine, inspect, text

from linkage import db, pki
from linkage.v1 import (  # noqa: F401 — imported for their descriptors
    inbound_pb2,
    intermediate_server_pb2,
    network_pb2,
    registry_pb2,
    review_pb2,
    staff_pb2,
    system_management_pb2,
    unified_address_pb2,
)
from simulator.world_cli import ProcessWorld
from unified_address.individual_number import complete

PROTO_FILES = (
    "linkage/v1/network.proto",
    "linkage/v1/registry.proto",
    "linkage/v1/intermediate_server.proto",
    "linkage/v1/inbound.proto",
    "linkage/v1/unified_address.proto",
    "linkage/v1/review.proto",
    "linkage/v1/staff.proto",
    "linkage/v1/system_management.proto",
)
MAX_DEPTH = 3
HUGE = (10_000, 300_000)
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # below the servers' 32 MiB: refused by content, not size
# Strings that are almost right, so that calls get past the first checks.
PLAUSIBLE = (
    "sakai",
    "jps",
    "osaka",
    "organizations/sakai",
    "organizations/jps",
    "organizations/sakai/queries/q-1",
    "organizations/jps/heldProvisions/p-1",
    "organizations/../sakai",
    "municipality",
    "mhlw",
    "medical_insurer",
    "table2:82",
    "table2:83",
    "pension_benefit",
    "local_tax",
    "special_collection_notice",
    "2026-06-01",
    "2026-02-30",
    "9999-12-31",
    "q-1",
    "K-1",
    "N-1",
    "U-1",
    complete("12345678901"),
    "123456789012",
    "AAAAAAAAAAAAAAAAAAAA",
    "",
    " ",
    "\x00",
    "\u202e",
    "' OR 1=1 --",
    "../../etc/passwd",
    "ｓａｋａｉ",
    "あ" * 129,
    "A" * 129,
    "bs.sakai.kouki",
    "kouki",
    "reviewer.demo",
    "Bearer x",
)
INT_EDGES = (0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63))


def method(full_name: str) -> MethodDescriptor:
    """``linkage.v1.Service/Method`` → its descriptor."""
    service, _, name = full_name.partition("/")
    found: MethodDescriptor = (
        descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    )
    return found


def all_methods() -> list[str]:
    """Every RPC of every service of our protos, as ``service/method``."""
    pool = descriptor_pool.Default()
    names: list[str] = []
    for proto in PROTO_FILES:
        for service in pool.FindFileByName(proto).services_by_name.values():
            names += [f"{service.full_name}/{m.name}" for m in service.methods]
    return names


# --- values -----------------------------------------------------------------------------------


def _strings() -> st.SearchStrategy[str]:
    huge = st.builds(lambda c, n: c * n, st.sampled_from("a9-/\x00あ🙂"), st.sampled_from(HUGE))
    return st.one_of(
        st.sampled_from(PLAUSIBLE), st.text(max_size=40), st.text(min_size=200, max_size=600), huge
    )


def _bytes() -> st.SearchStrategy[bytes]:
    huge = st.builds(lambda n: b"\xff" * n, st.sampled_from(HUGE))
    return st.one_of(st.binary(max_size=80), huge, st.just(b""))


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted({v for v in INT_EDGES if low <= v <= high} | {low, high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(-5, 400))


_SCALARS: dict[int, Any] = {
    FieldDescriptor.TYPE_INT32: lambda: _ints(32, True),
    FieldDescriptor.TYPE_SINT32: lambda: _ints(32, True),
    FieldDescriptor.TYPE_SFIXED32: lambda: _ints(32, True),
    FieldDescriptor.TYPE_INT64: lambda: _ints(64, True),
    FieldDescriptor.TYPE_SINT64: lambda: _ints(64, True),
    FieldDescriptor.TYPE_SFIXED64: lambda: _ints(64, True),
    FieldDescriptor.TYPE_UINT32: lambda: _ints(32, False),
    FieldDescriptor.TYPE_FIXED32: lambda: _ints(32, False),
    FieldDescriptor.TYPE_UINT64: lambda: _ints(64, False),
    FieldDescriptor.TYPE_FIXED64: lambda: _ints(64, False),
    FieldDescriptor.TYPE_BOOL: st.booleans,
    FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats,
    FieldDescriptor.TYPE_STRING: _strings,
    FieldDescriptor.TYPE_BYTES: _bytes,
}


def _enum(field_: FieldDescriptor) -> st.SearchStrategy[int]:
    """A defined value, or any int32: proto3 enums are open, a peer may send anything."""
    assert field_.enum_type is not None
    known = [value.number for value in field_.enum_type.values]
    return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))


def _value(field_: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field_.type == FieldDescriptor.TYPE_MESSAGE:
        assert field_.message_type is not None
        return messages(field_.message_type, depth + 1)
    if field_.type == FieldDescriptor.TYPE_ENUM:
        return _enum(field_)
    strategy: st.SearchStrategy[Any] = _SCALARS[field_.type]()
    return strategy


def _small(field_: FieldDescriptor) -> Any:
    """A small value of the field's type (what a long repeated field repeats)."""
    if field_.type == FieldDescriptor.TYPE_MESSAGE:
        assert field_.message_type is not None
        return GetMessageClass(field_.message_type)()
    return {FieldDescriptor.TYPE_STRING: "x", FieldDescriptor.TYPE_BYTES: b"x"}.get(
        field_.type, 1 if field_.type != FieldDescriptor.TYPE_BOOL else True
    )


def _repeated(field_: FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
    """A few random values, or very many small ones (past every per-request limit)."""
    small = _small(field_)
    many = st.sampled_from((17, 10_001)).map(lambda n: [small] * n)
    return st.one_of(st.lists(_value(field_, depth), max_size=3), many)


def _is_map(field_: Any) -> bool:
    message_type = field_.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random messages of ``descriptor``: each field absent or a random value of its type."""
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field_ in descriptor.fields:
        if _is_map(field_):
            assert field_.message_type is not None
            key, value = (
                field_.message_type.fields_by_name["key"],
                field_.message_type.fields_by_name["value"],
            )
            optional[field_.name] = st.dictionaries(
                _value(key, depth), _value(value, depth), max_size=3
            )
        elif field_.is_repeated:
            optional[field_.name] = _repeated(field_, depth)
        else:
            optional[field_.name] = _value(field_, depth)
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: Any, values: Mapping[str, Any]) -> Message:
    message: Message = cls()
    for name, value in values.items():
        field_ = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if _is_map(field_):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field_.is_repeated:
            if field_.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field_.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def requests(rpc: MethodDescriptor) -> st.SearchStrategy[list[bytes]]:
    """What a hostile client sends: serialized messages, or bytes that may not parse; several
    (or none) for a streaming request."""
    serialized = messages(rpc.input_type).map(lambda m: m.SerializeToString())
    one = st.one_of(
        serialized.filter(lambda data: len(data) <= MAX_REQUEST_BYTES),
        st.binary(min_size=1, max_size=200),
    )
    if rpc.client_streaming:
        return st.lists(one, min_size=0, max_size=3)
    return st.lists(one, min_size=1, max_size=1)


# --- the world under attack and what a call changed -------------------------------------------

# Tables that change whenever a record is appended (chain heads, checkpoints), and the migration
# bookkeeping: not state a refused call could have changed on purpose.
_DERIVED = frozenset(
    {"alembic_version", "access_record_heads", "access_record_checkpoints", "access_record_anchors"}
)


@dataclass
class RowCounts:
    """Row counts per table per system database. Refusals the network records on purpose
    (ACCESS_DENIED records: an attempt beyond the caller's identity) are not counted."""

    urls: Mapping[str, str]
    _engines: dict[str, Engine] = field(default_factory=dict)
    _queries: dict[str, str] = field(default_factory=dict)

    def _query(self, component: str, engine: Engine) -> str:
        if component not in self._queries:
            tables = sorted(set(inspect(engine).get_table_names()) - _DERIVED)
            parts = []
            for table in tables:
                where = " WHERE event <> 'ACCESS_DENIED'" if table == "access_records" else ""
                # Table names come from the database's own catalogue, not from any input.
                parts.append(f"SELECT '{table}', count(*) FROM {table}{where}")  # noqa: S608
            self._queries[component] = " UNION ALL ".join(parts)
        return self._queries[component]

    def snapshot(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for component, url in self.urls.items():
            engine = self._engines.get(component)
            if engine is None:
                engine = self._engines[component] = db.make_engine(url)
            with engine.connect() as connection:
                rows = connection.execute(text(self._query(component, engine)))
                counts.update({f"{component}.{table}": int(n) for table, n in rows})
        return counts

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


def changed(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    return {
        key: (before.get(key, 0), after.get(key, 0))
        for key in sorted(set(before) | set(after))
        if before.get(key, 0) != after.get(key, 0)
    }


@contextlib.contextmanager
def row_counts(urls: Mapping[str, str]) -> Iterator[RowCounts]:
    counts = RowCounts(urls)
    try:
        yield counts
    finally:
        counts.close()


def stream_of(payloads: Sequence[bytes]) -> Iterator[bytes]:
    yield from payloads


@dataclass
class HostileWorld:
    """The running world, where each service is served, and a way to count every row."""

    world: ProcessWorld
    pki_dir: Path
    served: dict[str, str]  # service full name → address
    counts: RowCounts
    _channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)

    def channel(self, identity: str, address: str) -> grpc.Channel:
        """A (synchronous) mutual-TLS channel presenting ``identity``, kept for the session."""
        key = (identity, address)
        if key not in self._channels:
            credentials = pki.channel_credentials(self.pki_dir, identity)
            self._channels[key] = grpc.secure_channel(address, credentials)
        return self._channels[key]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self.counts.close()
