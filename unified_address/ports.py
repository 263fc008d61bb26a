"""The upstream systems as the domain sees them: typed ports, no transport.

Owns the interfaces the domain calls: the resident registry (``SerialIssuer``: a processing
serial for an individual number) and the intermediate server (``IntermediateServer``: linkage
codes, duplicates, queries). ``unified_address.upstream`` implements them over gRPC; tests may
implement them in memory. Failures are raised as ``linkage.errors.LinkageError`` subclasses with
the upstream's own reason, so the domain never sees a transport error type.

Payloads the server relays unread (duplicate values, query results) travel as the contract's
protobuf messages: they are data, and copying them into look-alike classes would only cost time.

Must never: import grpc; accept an individual number on any method but ``SerialIssuer``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from linkage.v1 import common_pb2, intermediate_server_pb2

__all__ = [
    "DuplicateRow",
    "ImportOutcome",
    "IntermediateServer",
    "QueryRequest",
    "SerialIssuer",
]


class SerialIssuer(Protocol):
    """The resident registry: the only place an individual number is ever sent."""

    async def issue_processing_serial(self, individual_number: str) -> str:
        """A processing serial (処理通番) for the person, for this organization."""
        ...


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """One duplicate for the intermediate server, by unified number."""

    unified_number: str
    value: common_pb2.DuplicateValue
    auto_response_disabled: bool


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What the intermediate server reports for an import."""

    imported: int
    already_imported: bool


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A query as it goes to the intermediate server: by unified number, with the capacity."""

    query_id: str
    requester_capacity: str
    procedure: str
    provider: str
    data_items: tuple[str, ...]
    unified_number: str
    on_date: str
    business_system: str


class IntermediateServer(Protocol):
    """The organization's tenant at the intermediate server; never given an individual number."""

    async def acquire_linkage_code(self, unified_number: str, processing_serial: str) -> None:
        """Have the server obtain and store the person's linkage code (idempotent)."""
        ...

    async def import_duplicates(
        self, import_id: str, business_system: str, rows: Sequence[DuplicateRow]
    ) -> ImportOutcome:
        """Store duplicates, all or nothing, idempotent by ``import_id``."""
        ...

    async def submit_query(self, query: QueryRequest) -> intermediate_server_pb2.QueryResult:
        """Submit one query and return its outcome (idempotent by query id)."""
        ...

    def stream_queries(
        self, batches: AsyncIterator[Sequence[QueryRequest]], deadline: float | None = None
    ) -> AsyncIterator[list[intermediate_server_pb2.QueryResult]]:
        """Batch queries over one stream: batches in, results out as they complete (any order,
        one per query sent, idempotent by query id). Ends when ``batches`` ends and every
        result is out; a failure of the whole stream raises its ``LinkageError``."""
        ...

    async def get_query_result(
        self, query_id: str, wait_seconds: float
    ) -> intermediate_server_pb2.QueryResult:
        """The stored outcome of a query, waiting up to ``wait_seconds`` for a final one."""
        ...
