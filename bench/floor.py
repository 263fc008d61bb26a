"""The machine's floor: what bare gRPC, SQLite, hashing and crypto do on this machine, now.

Owns the floor measurements the gateway's figures are divided by, each measured in the same run
on the same machine, warmed up, repeated in rounds and reported as the median round:

- gRPC unary echo (1 KiB, grpc.aio, 64 calls in flight, mutual TLS by default), over one hop and
  over a chain of echo servers as deep as a real query (default 4 hops: business system →
  unified address → requester's platform → network → provider's platform), with unloaded
  p50/p99 latency. Every echo server runs in its own process (``multiprocessing`` spawn, bound to
  127.0.0.1 port 0, port reported through a pipe), never in the client's;
- raw ``sqlite3`` ``executemany`` of duplicate rows into a WAL-mode file database (the same
  pragmas as ``linkage.db``), rows/s; and ``sqlite_copy_floor``: the very rows a gateway
  measurement stored, re-inserted into the same table definition (the fair floor of an import);
- a bare sha256 chain over record bytes (the shape of ``linkage.records.chain_hash``),
  records/s, over synthetic records or over the entry bytes of a real ledger;
- PyNaCl SealedBox and precomputed Box encryptions/s, Ed25519 signs/s and verifies/s;
- process memory: peak and current RSS from ``/proc/<pid>/status`` and an RSS sampler.

Load loops are bounded in count and in time and talk only to 127.0.0.1. Nothing here knows the
gateway; ``bench.run`` puts the two side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import hashlib
import math
import multiprocessing
import os
import random
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "REFERENCE_2CORE",
    "EchoChain",
    "FloorResult",
    "FloorSettings",
    "RssSampler",
    "RssTrend",
    "cpu_rate",
    "cpu_seconds",
    "crypto_floors",
    "drive",
    "echo_floor",
    "load_rounds",
    "measure_floor",
    "nearest_rank",
    "peak_rss_bytes",
    "profiled",
    "rss_bytes",
    "sha256_chain_floor",
    "sqlite_copy_floor",
    "sqlite_insert_floor",
    "synthetic_duplicate_rows",
    "synthetic_records",
    "unloaded_latencies_ms",
]

ECHO_METHOD = "/bench.Echo/Echo"
LOCALHOST = "127.0.0.1"
CLIENT_IDENTITY = "org.bench-client"
# Published figures for a 2-core machine, printed beside ours to tell a sick machine from a slow
# gateway. Never used in a computation.
REFERENCE_2CORE: dict[str, str] = {
    "echo_one_hop_calls_per_s": "≈2,100",
    "echo_chain_calls_per_s": "≈610 (3 hops)",
    "echo_chain_p50_ms": "≈3.3 (3 hops)",
    "sealedbox_encrypt_per_s": "≈12k",
    "ed25519_sign_per_s": "≈23k",
    "ed25519_verify_per_s": "≈11k",
    "sqlite_insert_rows_per_s": "20k-70k",
}


@dataclass(frozen=True, slots=True)
class FloorResult:
    """One floor figure: the median round and every round, with what was measured."""

    key: str
    unit: str
    value: float
    rounds: tuple[float, ...]
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "rounds": list(self.rounds),
            "higher_is_better": self.higher_is_better,
            "params": self.params,
        }


@dataclass(frozen=True, slots=True)
class FloorSettings:
    """How long and how hard to measure; ``quick()`` keeps ``make bench QUICK=1`` under 2 min."""

    rounds: int = 5
    round_seconds: float = 3.0
    max_calls_per_round: int = 50_000
    warmup_seconds: float = 1.0
    latency_calls: int = 2_000
    hops: int = 4
    payload_bytes: int = 1024
    in_flight: int = 64
    mtls: bool = True
    sqlite_rows: int = 100_000
    sqlite_batch: int = 1_000
    hash_records: int = 200_000
    crypto_ops: int = 5_000
    compare_insecure: bool = True

    @classmethod
    def quick(cls) -> FloorSettings:
        return cls(
            rounds=3,
            round_seconds=1.0,
            max_calls_per_round=20_000,
            warmup_seconds=0.5,
            latency_calls=300,
            sqlite_rows=20_000,
            hash_records=50_000,
            crypto_ops=1_500,
            compare_insecure=False,
        )


# --- timing helpers -------------------------------------------------------------------------


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (p99 of 300 samples is the 297th smallest)."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index]


def cpu_rate(repeat: Callable[[int], object], n: int, rounds: int) -> tuple[float, list[float]]:
    """Median ops/s over ``rounds`` of ``repeat(n)`` (an operation n times), after a warm-up."""
    repeat(max(1, n // 10))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        repeat(n)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


@contextlib.contextmanager
def profiled(profile_dir: Path | None, name: str) -> Iterator[None]:
    """Profile this process while the block runs into ``<profile_dir>/<name>.prof`` (if set)."""
    if profile_dir is None:
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(profile_dir / f"{name}.prof")


# --- echo servers, each in its own process --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerSpec:
    identity: str
    pki_dir: str | None
    profile_path: str | None


def _server_main(conn: Connection, spec: _ServerSpec) -> None:
    """Child process entry: serve echo (or relay) until told to stop or the parent is gone."""
    profiler = cProfile.Profile() if spec.profile_path else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(_serve(conn, spec))
    finally:
        if profiler is not None and spec.profile_path:
            profiler.disable()
            profiler.dump_stats(spec.profile_path)
        conn.close()


async def _recv(conn: Connection) -> Any:
    """The next message from the parent; ``None`` once the pipe is closed (parent gone)."""
    try:
        return await asyncio.to_thread(conn.recv)
    except (EOFError, OSError):
        return None


def _channel(target: str, identity: str, pki_dir: str | None) -> grpc.aio.Channel:
    if pki_dir is None:
        return grpc.aio.insecure_channel(target)
    from linkage import pki

    return grpc.aio.secure_channel(target, pki.channel_credentials(Path(pki_dir), identity))


def _echo_callable(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    # No serializers: requests and responses are the raw bytes on the wire.
    return channel.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)


class _Hop:
    """The server's handler: echo, or relay to the next hop once one is configured."""

    def __init__(self) -> None:
        self.forward: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] | None = None

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if self.forward is None:
            return request
        return await self.forward(request, timeout=30)


async def _serve(conn: Connection, spec: _ServerSpec) -> None:
    hop = _Hop()
    server = grpc.aio.server()
    method = grpc.unary_unary_rpc_method_handler(hop.echo)  # identity (bytes) serializers
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": method}),)
    )
    if spec.pki_dir is None:
        port = server.add_insecure_port(f"{LOCALHOST}:0")
    else:
        from linkage import pki

        creds = pki.server_credentials(Path(spec.pki_dir), spec.identity)
        port = server.add_secure_port(f"{LOCALHOST}:0", creds)
    await server.start()
    channel: grpc.aio.Channel | None = None
    try:
        conn.send(port)
        next_hop = await _recv(conn)
        if next_hop:
            channel = _channel(next_hop, spec.identity, spec.pki_dir)
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            hop.forward = _echo_callable(channel)
        conn.send("ready")
        await _recv(conn)  # "stop", or None when the parent died: either way, shut down
    finally:
        await server.stop(grace=1.0)
        if channel is not None:
            await channel.close(None)


def _recv_within(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError("echo server did not answer in time")
    return conn.recv()


class EchoChain:
    """``hops`` echo servers in separate processes, each relaying to the next; the last echoes.

    A call to ``address`` crosses ``hops`` gRPC hops. Use as ``async with EchoChain(...)``; on
    exit every process is stopped, joined, and killed if it would not stop.
    """

    def __init__(
        self, hops: int, *, pki_dir: Path | None = None, profile_dir: Path | None = None
    ) -> None:
        if hops < 1:
            raise ValueError("an echo chain needs at least one hop")
        self.hops = hops
        self.pki_dir = pki_dir
        self.profile_dir = profile_dir
        self.ports: list[int] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []

    @staticmethod
    def identities(hops: int) -> list[str]:
        return [f"platform.bench-{index + 1}" for index in range(hops)]

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.ports[0]}"

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def _spec(self, index: int, identity: str) -> _ServerSpec:
        profile = None
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            profile = str(self.profile_dir / f"echo-{self.hops}hop-server{index + 1}.prof")
        pki_dir = None if self.pki_dir is None else str(self.pki_dir)
        return _ServerSpec(identity=identity, pki_dir=pki_dir, profile_path=profile)

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        try:
            for index, identity in enumerate(self.identities(self.hops)):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_server_main,
                    args=(child_end, self._spec(index, identity)),
                    name=f"bench-echo-{index + 1}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                self._processes.append(process)
                self._conns.append(parent_end)
            self.ports = list(await self._gather_replies(within=60))
            for index, conn in enumerate(self._conns):
                last = index == len(self._conns) - 1
                conn.send(None if last else f"{LOCALHOST}:{self.ports[index + 1]}")
            await self._gather_replies(within=60)
        except BaseException:
            await self.close()
            raise

    async def _gather_replies(self, within: float) -> list[Any]:
        replies = [asyncio.to_thread(_recv_within, conn, within) for conn in self._conns]
        return list(await asyncio.gather(*replies))

    async def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send("stop")
        await asyncio.to_thread(self._reap)
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _reap(self) -> None:
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    async def __aenter__(self) -> EchoChain:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- echo load ------------------------------------------------------------------------------


Call = Callable[[], Awaitable[object]]


async def drive(
    call: Call, *, in_flight: int, max_calls: int, max_seconds: float
) -> tuple[int, float]:
    """Keep ``in_flight`` calls going until ``max_calls`` are issued or time is up.

    Returns (calls completed, seconds). The first failing call cancels the others and raises.
    """
    issued = completed = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued, completed
        while issued < max_calls and time.perf_counter() < deadline:
            issued += 1
            await call()
            completed += 1

    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(in_flight):
                group.create_task(worker())
    except ExceptionGroup as failed:  # report the cause, not the group around it
        raise failed.exceptions[0] from None
    return completed, time.perf_counter() - start


async def load_rounds(call: Call, settings: FloorSettings) -> list[float]:
    """calls/s of each of ``settings.rounds`` rounds at ``settings.in_flight``, after warm-up.

    The same loop measures the gateway, so floor and gateway see the same load pattern.
    """
    s = settings
    await drive(
        call, in_flight=s.in_flight, max_calls=s.max_calls_per_round, max_seconds=s.warmup_seconds
    )
    rates = []
    for _ in range(s.rounds):
        done, elapsed = await drive(
            call,
            in_flight=s.in_flight,
            max_calls=s.max_calls_per_round,
            max_seconds=s.round_seconds,
        )
        rates.append(done / elapsed)
    return rates


async def unloaded_latencies_ms(call: Call, count: int) -> list[float]:
    """Unloaded latency: one call at a time, ``count`` calls, in ms, sorted."""
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return sorted(samples)


@contextlib.asynccontextmanager
async def _client(
    address: str, pki_dir: Path | None
) -> AsyncIterator[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]:
    channel = _channel(address, CLIENT_IDENTITY, None if pki_dir is None else str(pki_dir))
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        yield _echo_callable(channel)
    finally:
        await channel.close(None)


async def echo_floor(
    hops: int,
    settings: FloorSettings,
    *,
    pki_dir: Path | None,
    profile_dir: Path | None = None,
    label: str | None = None,
) -> list[FloorResult]:
    """calls/s at ``in_flight`` concurrency and unloaded p50/p99 over an ``hops``-deep chain."""
    s, label = settings, label or ("echo_one_hop" if hops == 1 else "echo_chain")
    payload = random.Random(hops).randbytes(s.payload_bytes)
    async with EchoChain(hops, pki_dir=pki_dir, profile_dir=profile_dir) as chain:
        async with _client(chain.address, pki_dir) as echo:
            if await echo(payload, timeout=30) != payload:
                raise RuntimeError("echo returned different bytes")

            def call() -> Awaitable[bytes]:
                return echo(payload, timeout=30)

            rates = await load_rounds(call, s)
            latencies = await unloaded_latencies_ms(call, s.latency_calls)
        server_peaks = [peak_rss_bytes(pid) for pid in chain.pids]
    params: dict[str, Any] = {
        "hops": hops,
        "payload_bytes": s.payload_bytes,
        "in_flight": s.in_flight,
        "transport": "insecure" if pki_dir is None else "mtls",
        "processes": "one per server, client in the bench process",
        "server_peak_rss_bytes": server_peaks,
    }
    lat = {**params, "calls": len(latencies), "quantile": "nearest rank"}
    p50, p99 = nearest_rank(latencies, 0.50), nearest_rank(latencies, 0.99)
    return [
        FloorResult(
            f"{label}_calls_per_s", "calls/s", statistics.median(rates), tuple(rates), params=params
        ),
        FloorResult(f"{label}_p50_ms", "ms", p50, (), higher_is_better=False, params=lat),
        FloorResult(f"{label}_p99_ms", "ms", p99, (), higher_is_better=False, params=lat),
    ]


# --- SQLite and sha256 ----------------------------------------------------------------------

DUPLICATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant", "TEXT"),
    ("unified_number", "TEXT"),
    ("data_item", "TEXT"),
    ("version", "INTEGER"),
    ("effective_from", "TEXT"),
    ("effective_to", "TEXT"),
    ("content", "BLOB"),
    ("auto_response_disabled", "INTEGER"),
)
# The duplicate store's unique key is (tenant, unified_number, data_item, version).
DUPLICATE_KEY_COLUMNS = 4
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bytes: "BLOB"}


def synthetic_duplicate_rows(count: int, *, seed: int = 0) -> list[tuple[Any, ...]]:
    """Rows shaped like the duplicate store's: 8 columns, content ~120 bytes, deterministic."""
    rng = random.Random(seed)
    items = ("local_tax", "pension", "resident", "medical_insurance_benefit")
    rows = []
    for index in range(count):
        rows.append(
            (
                "27140",
                f"{index // len(items):015d}",
                items[index % len(items)],
                1,
                "2026-04-01",
                None if index % 3 else "2027-03-31",
                rng.randbytes(120),
                int(rng.random() < 0.01),
            )
        )
    return rows


def _columns_for(rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[str, str]]:
    first = rows[0]
    if len(first) == len(DUPLICATE_COLUMNS):
        return DUPLICATE_COLUMNS
    return [(f"c{i}", _SQL_TYPES.get(type(value), "")) for i, value in enumerate(first)]


def _sqlite_round(
    path: Path, rows: Sequence[tuple[Any, ...]], batch: int, key_columns: int
) -> float:
    columns = _columns_for(rows)
    names = [name for name, _ in columns]
    ddl = ", ".join(f"{name} {kind}".strip() for name, kind in columns)
    if key_columns:
        ddl += f", UNIQUE ({', '.join(names[:key_columns])})"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"CREATE TABLE dup ({ddl})")
        insert = f"INSERT INTO dup VALUES ({', '.join('?' * len(names))})"  # noqa: S608
        start = time.perf_counter()
        for offset in range(0, len(rows), batch):
            connection.execute("BEGIN")
            connection.executemany(insert, rows[offset : offset + batch])
            connection.execute("COMMIT")
        return len(rows) / (time.perf_counter() - start)
    finally:
        connection.close()


def sqlite_insert_floor(
    work_dir: Path,
    rows: Sequence[tuple[Any, ...]] | None = None,
    *,
    rounds: int = 3,
    batch: int = 1_000,
    key_columns: int | None = None,
    default_count: int = 20_000,
) -> FloorResult:
    """rows/s of ``executemany`` in ``batch``-row transactions into a fresh WAL file each round.

    ``rows`` defaults to ``synthetic_duplicate_rows``; ``key_columns`` leading columns form a
    UNIQUE key (default: the duplicate store's 4 for 8-column rows, none otherwise).
    """
    rows = rows if rows is not None else synthetic_duplicate_rows(default_count)
    if not rows:
        raise ValueError("no rows to insert")
    if key_columns is None:
        key_columns = DUPLICATE_KEY_COLUMNS if len(rows[0]) == len(DUPLICATE_COLUMNS) else 0
    work_dir.mkdir(parents=True, exist_ok=True)
    _sqlite_round(work_dir / "warmup.sqlite", rows[: max(1, len(rows) // 10)], batch, key_columns)
    rates = [
        _sqlite_round(work_dir / f"round{index}.sqlite", rows, batch, key_columns)
        for index in range(rounds)
    ]
    params = {
        "rows": len(rows),
        "columns": len(rows[0]),
        "batch": batch,
        "unique_key_columns": key_columns,
        "journal_mode": "WAL",
        "synchronous": "NORMAL",
        "sqlite_version": sqlite3.sqlite_version,
        "directory": str(work_dir),
    }
    return FloorResult(
        "sqlite_insert_rows_per_s", "rows/s", statistics.median(rates), tuple(rates), params=params
    )


def _table_ddl(connection: sqlite3.Connection, table: str) -> list[str]:
    """CREATE TABLE, then CREATE INDEX statements of ``table`` (constraints' indexes come with
    the table)."""
    query = (
        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "AND type IN ('table', 'index') ORDER BY type = 'index', name"
    )
    return [sql for (sql,) in connection.execute(query, (table,))]


def _copy_round(
    path: Path, ddl: Sequence[str], table: str, rows: Sequence[tuple[Any, ...]]
) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        for statement in ddl:
            connection.execute(statement)
        marks = ", ".join("?" * len(rows[0]))
        insert = f'INSERT INTO "{table}" VALUES ({marks})'  # noqa: S608 - our own table name
        start = time.perf_counter()
        connection.execute("BEGIN")
        connection.executemany(insert, rows)
        connection.execute("COMMIT")
        return len(rows) / (time.perf_counter() - start)
    finally:
        connection.close()


def sqlite_copy_floor(source: Path, table: str, work_dir: Path, *, rounds: int = 3) -> FloorResult:
    """rows/s of raw ``executemany`` of exactly the rows of ``table`` in the SQLite file
    ``source``, into a fresh WAL file with the same table and indexes, in one transaction per
    round (as an import commits). Key ``sqlite_same_rows_per_s``."""
    connection = sqlite3.connect(source)
    try:
        ddl = _table_ddl(connection, table)
        query = f'SELECT * FROM "{table}"'  # noqa: S608 - a table name from sqlite_master
        rows = connection.execute(query).fetchall() if ddl else []
    finally:
        connection.close()
    if not rows:
        raise ValueError(f"no table {table!r} with rows in {source}")
    work_dir.mkdir(parents=True, exist_ok=True)
    _copy_round(work_dir / "copy-warmup.sqlite", ddl, table, rows[: max(1, len(rows) // 10)])
    rates = [
        _copy_round(work_dir / f"copy{index}.sqlite", ddl, table, rows) for index in range(rounds)
    ]
    params = {
        "rows": len(rows),
        "columns": len(rows[0]),
        "table": table,
        "indexes": len(ddl) - 1,
        "transaction": "one per round",
        "journal_mode": "WAL",
        "synchronous": "NORMAL",
    }
    return FloorResult(
        "sqlite_same_rows_per_s", "rows/s", statistics.median(rates), tuple(rates), params=params
    )


def synthetic_records(count: int, *, size: int = 300, seed: int = 0) -> list[bytes]:
    """``count`` pseudo-random records of ``size`` bytes (an access record body is ~300)."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def sha256_chain_floor(
    records: Sequence[bytes] | None = None,
    *,
    rounds: int = 3,
    default_count: int = 50_000,
    key: str = "sha256_chain_records_per_s",
) -> FloorResult:
    """records/s of ``h = sha256(h || record)`` over ``records`` (the access-record chain)."""
    records = records if records is not None else synthetic_records(default_count)
    sha256 = hashlib.sha256

    def chain(n: int) -> bytes:
        digest = bytes(32)
        for record in records[:n]:
            digest = sha256(digest + record).digest()
        return digest

    value, rates = cpu_rate(chain, len(records), rounds)
    params = {"records": len(records), "mean_record_bytes": _mean_len(records)}
    return FloorResult(key, "records/s", value, tuple(rates), params=params)


def _mean_len(values: Sequence[bytes]) -> float:
    return sum(map(len, values)) / len(values) if values else 0.0


# --- crypto ---------------------------------------------------------------------------------


def crypto_floors(
    *, ops: int = 2_000, rounds: int = 3, message_bytes: int = 300
) -> list[FloorResult]:
    """SealedBox and precomputed-Box encryptions/s; Ed25519 signs/s and verifies/s."""
    from nacl.public import Box, PrivateKey, SealedBox
    from nacl.signing import SigningKey

    message = random.Random(1).randbytes(message_bytes)
    recipient, sender = PrivateKey.generate(), PrivateKey.generate()
    sealed_box = SealedBox(recipient.public_key)
    box = Box(sender, recipient.public_key)  # the shared key is computed once, here
    signing = SigningKey.generate()
    signed = signing.sign(message)
    verify_key = signing.verify_key

    def repeat(op: Callable[[], object]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                op()

        return run

    cases: list[tuple[str, Callable[[], object]]] = [
        ("sealedbox_encrypt_per_s", lambda: sealed_box.encrypt(message)),
        ("box_encrypt_per_s", lambda: box.encrypt(message)),
        ("ed25519_sign_per_s", lambda: signing.sign(message)),
        ("ed25519_verify_per_s", lambda: verify_key.verify(signed)),
    ]
    results = []
    for key, op in cases:
        value, rates = cpu_rate(repeat(op), ops, rounds)
        results.append(
            FloorResult(
                key,
                "ops/s",
                value,
                tuple(rates),
                params={"message_bytes": message_bytes, "ops": ops},
            )
        )
    return results


# --- memory ---------------------------------------------------------------------------------


def _status_kib(pid: int | None, field_name: str) -> int:
    path = Path(f"/proc/{pid or 'self'}/status")
    for line in path.read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise LookupError(f"{field_name} not in {path}")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) ``pid`` (default: this process) has used, in s."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak resident set size (``VmHWM``) of ``pid`` (default: this process), in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int | None = None) -> int:
    """Current resident set size (``VmRSS``) of ``pid`` (default: this process), in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


@dataclass(frozen=True, slots=True)
class RssTrend:
    """RSS of one process after warm-up: first and last quarter medians and the growth between."""

    pid: int
    samples: int
    early_bytes: float
    late_bytes: float

    @property
    def growth_bytes(self) -> float:
        return self.late_bytes - self.early_bytes


class RssSampler:
    """Samples RSS of some processes every ``interval`` seconds while the event loop runs.

    ``async with RssSampler(pids) as sampler: ...`` then ``sampler.trend(pid, warmup_s)`` tells
    whether a server kept growing after warm-up. A process that exits stops being sampled.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in pids}
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    def elapsed(self) -> float:
        """Seconds since sampling started (the time axis of ``samples`` and ``trend``)."""
        return time.monotonic() - self._started

    def sample(self) -> None:
        now = self.elapsed()
        for pid, series in self.samples.items():
            with contextlib.suppress(OSError, LookupError):
                series.append((now, rss_bytes(pid)))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def trend(self, pid: int, warmup_seconds: float) -> RssTrend | None:
        """Median RSS of the first and last quarter of the samples taken after warm-up."""
        values = [rss for at, rss in self.samples.get(pid, []) if at >= warmup_seconds]
        if len(values) < 4:
            return None
        quarter = len(values) // 4
        return RssTrend(
            pid,
            len(values),
            statistics.median(values[:quarter]),
            statistics.median(values[-quarter:]),
        )


# --- the whole floor ------------------------------------------------------------------------


def _pki(work_dir: Path, hops: int) -> Path:
    from linkage import pki

    directory = work_dir / "pki"
    pki.init_pki(directory, [*EchoChain.identities(hops), CLIENT_IDENTITY])
    return directory


async def measure_floor(
    settings: FloorSettings,
    work_dir: Path,
    *,
    rows: Sequence[tuple[Any, ...]] | None = None,
    records: Sequence[bytes] | None = None,
    profile_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, FloorResult]:
    """Every floor figure, keyed by name. ``rows``/``records`` default to synthetic ones."""
    s = settings
    pki_dir = _pki(work_dir, max(s.hops, 1)) if s.mtls else None
    results: list[FloorResult] = []
    progress("floor: echo, one hop")
    with profiled(profile_dir, "floor-echo-one-hop"):
        results += await echo_floor(1, s, pki_dir=pki_dir, profile_dir=profile_dir)
    if s.compare_insecure and pki_dir is not None:
        progress("floor: echo, one hop, insecure (for comparison)")
        insecure = await echo_floor(1, s, pki_dir=None, label="echo_one_hop_insecure")
        results.append(insecure[0])
    progress(f"floor: echo chain, {s.hops} hops")
    with profiled(profile_dir, "floor-echo-chain"):
        results += await echo_floor(s.hops, s, pki_dir=pki_dir, profile_dir=profile_dir)
    progress("floor: sqlite executemany")
    with profiled(profile_dir, "floor-sqlite"):
        # Blocking on purpose: nothing else runs now, and cProfile sees only this thread.
        sqlite = sqlite_insert_floor(
            work_dir / "sqlite",
            rows,
            rounds=s.rounds,
            batch=s.sqlite_batch,
            default_count=s.sqlite_rows,
        )
        results.append(sqlite)
    progress("floor: sha256 chain")
    with profiled(profile_dir, "floor-sha256"):
        results.append(sha256_chain_floor(records, rounds=s.rounds, default_count=s.hash_records))
    progress("floor: crypto")
    with profiled(profile_dir, "floor-crypto"):
        results += crypto_floors(ops=s.crypto_ops, rounds=s.rounds)
    return {result.key: result for result in results}
