"""The gateway's figures over the whole world: batch queries/s, single-query latency, memory.

Owns the measurements that drive the world of processes (``bench.world``) the way a business
system does: Sakai's late-stage medical care system (``bs.sakai.kouki``) asks the Japan Pension
Service for ``pension_benefit`` under ``table2:82``, every query with its own id, for people of
whom half have a pension at JPS (PROVIDED) and half not (NO_DATA). A result counts when it is
back at the business system, decrypted, with the records of the requester, the network and the
provider committed (each server commits its records before it answers).

- ``measure_batch``: ``StreamPersonQueries`` at Sakai's unified address server, one stream per
  round, messages of ``message_size`` queries sent for ``round_seconds`` as fast as the stream
  takes them (its flow control and the server's in-flight window pace the client); a round's
  rate is the results that came back divided by the time until the last one. The median round
  is the figure. RSS of every server process is sampled throughout (``RssSampler``): peak
  (``VmHWM``) and the trend after warm-up (first and last quarter medians).
- ``measure_latency``: ``QueryPerson`` one at a time, unloaded; then again while a paced batch
  stream runs at half the batch maximum just measured. p50 and p99 by nearest rank.

With ``--profile`` the hot servers are recorded with py-spy while the load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.floor import RssSampler, cpu_seconds, nearest_rank, peak_rss_bytes
from bench.hotspots import PySpy
from bench.world import DATA_ITEM, ON_DATE, PROCEDURE, PROVIDER, BenchWorld, People, start_world

if TYPE_CHECKING:
    from bench.run import RunContext
    from linkage.v1 import unified_address_pb2

__all__ = [
    "HOT_SERVERS",
    "GatewaySettings",
    "measure_batch",
    "measure_latency",
    "shared_world",
]

MIB = 1024 * 1024
# The processes a query from Sakai to JPS passes through (py-spy records these).
HOT_SERVERS = ("ua-sakai", "platform-municipal", "network", "platform-jps")
OK_STATUSES = frozenset({"QUERY_STATUS_PROVIDED", "QUERY_STATUS_NO_DATA"})


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How many people, how long and how hard; ``quick()`` fits ``make bench QUICK=1``."""

    people: int = 2_000
    message_size: int = 1_000
    in_flight: int = 4_000  # the client's window: 8 of the intermediate server's chunks
    warmup_seconds: float = 5.0
    rounds: int = 5
    round_seconds: float = 10.0
    latency_calls: int = 500
    latency_warmup_calls: int = 20
    loaded_message_size: int = 50
    rss_interval: float = 0.5
    deadline: float = 600.0
    breakdown: bool = True  # also time SubmitQuery straight at the platform

    @classmethod
    def quick(cls) -> GatewaySettings:
        return cls(
            people=100,
            message_size=500,
            in_flight=2_000,
            warmup_seconds=2.0,
            rounds=3,
            round_seconds=2.0,
            latency_calls=100,
            latency_warmup_calls=10,
            breakdown=False,
        )

    @classmethod
    def of(cls, ctx: RunContext) -> GatewaySettings:
        return cls.quick() if ctx.quick else cls()


# --- the world, once per run -------------------------------------------------------------------


async def shared_world(ctx: RunContext) -> BenchWorld:
    """The world of this run: started by the first measurement that needs it, stopped at the
    end of the run (``ctx.stack``)."""
    world: BenchWorld | None = ctx.shared.get("world")
    if world is None:
        settings = GatewaySettings.of(ctx)
        people = People(settings.people, settings.people // 2)
        started = time.perf_counter()
        world = await ctx.stack.enter_async_context(start_world(ctx.work_dir / "world", people))
        ctx.shared["world"], ctx.shared["people"] = world, people
        ctx.record(
            "world",
            {
                "processes": sorted(world.pids),
                "people": people.count,
                "with_pension": people.with_pension,
                "setup_s": round(time.perf_counter() - started, 1),
                "transport": "mutual TLS",
                "databases": "SQLite file per component (WAL, synchronous=NORMAL)",
            },
        )
    return world


def _query(people: People, query_id: str, index: int) -> unified_address_pb2.QueryPersonRequest:
    from linkage.v1 import unified_address_pb2

    return unified_address_pb2.QueryPersonRequest(
        query_id=query_id,
        procedure=PROCEDURE,
        provider=PROVIDER,
        data_items=[DATA_ITEM],
        address_number=people.address(index),
        on_date=ON_DATE,
    )


def _stub(world: BenchWorld, stack: contextlib.AsyncExitStack) -> Any:
    from linkage.v1 import unified_address_pb2_grpc

    channel = world.channel("bs.sakai.kouki", "ua-sakai")
    stack.push_async_callback(channel.close, None)
    return unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)


# --- batch ---------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Results of a stream: by status, and whether each matched what the person should get."""

    statuses: Counter[str]
    wrong: int = 0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in OK_STATUSES)

    def add(self, people: People, results: Any) -> None:
        from linkage.v1 import common_pb2

        for result in results:
            status = common_pb2.QueryStatus.Name(result.status)
            self.statuses[status] += 1
            index = int(result.query_id.rsplit("-", 1)[1])
            provided = status == "QUERY_STATUS_PROVIDED"
            if status in OK_STATUSES and provided != people.has_pension(index):
                self.wrong += 1


class _Window:
    """The client's own bound on queries sent and not answered: a business system does not
    send faster than it is answered, and without it the transport's buffers would take
    minutes of queries in the seconds a round sends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0
        self._room = asyncio.Event()

    async def reserve(self, count: int) -> None:
        while self.outstanding and self.outstanding + count > self.limit:
            self._room.clear()
            await self._room.wait()
        self.outstanding += count

    def release(self, count: int) -> None:
        self.outstanding -= count
        self._room.set()


async def _messages(
    people: People, prefix: str, size: int, until: float, window: _Window
) -> AsyncIterator[unified_address_pb2.StreamPersonQueriesRequest]:
    from linkage.v1 import unified_address_pb2

    start = 0
    while time.perf_counter() < until:
        await window.reserve(size)
        queries = [_query(people, f"{prefix}-{n}", n) for n in range(start, start + size)]
        yield unified_address_pb2.StreamPersonQueriesRequest(queries=queries)
        start += size


async def _stream_round(
    stub: Any, people: People, prefix: str, seconds: float, settings: GatewaySettings
) -> tuple[float, _Tally]:
    """One stream sending for ``seconds``; (ok results per second until the last, tally)."""
    tally = _Tally(Counter())
    window = _Window(settings.in_flight)
    started = time.perf_counter()
    requests = _messages(people, prefix, settings.message_size, started + seconds, window)
    async for response in stub.StreamPersonQueries(requests, timeout=settings.deadline):
        tally.add(people, response.results)
        window.release(len(response.results))
    return tally.ok / (time.perf_counter() - started), tally


def _rss_report(sampler: RssSampler, world: BenchWorld, warmup: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, pid in sorted(world.pids.items()):
        trend = sampler.trend(pid, warmup)
        with contextlib.suppress(OSError, LookupError):
            report[name] = {
                "peak_mib": round(peak_rss_bytes(pid) / MIB, 1),
                "early_mib": None if trend is None else round(trend.early_bytes / MIB, 1),
                "late_mib": None if trend is None else round(trend.late_bytes / MIB, 1),
                "growth_mib": None if trend is None else round(trend.growth_bytes / MIB, 2),
                "samples_after_warmup": 0 if trend is None else trend.samples,
            }
    return report


async def measure_batch(ctx: RunContext) -> float:
    """Median batch queries/s (see the module); leaves the RSS figures in ``ctx.shared``."""
    settings = GatewaySettings.of(ctx)
    world = await shared_world(ctx)
    people: People = ctx.shared["people"]
    rounds: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        stub = _stub(world, stack)
        sampler = await stack.enter_async_context(
            RssSampler(list(world.pids.values()), settings.rss_interval)
        )
        await _stream_round(stub, people, "warmup", settings.warmup_seconds, settings)
        warmed = sampler.elapsed()
        async with _Profiling(ctx, world, "batch") as profiling:
            for index in range(settings.rounds):
                rate, tally = await _stream_round(
                    stub, people, f"batch{index}", settings.round_seconds, settings
                )
                profiling.queries += sum(tally.statuses.values())
                rounds.append(
                    {"rate": rate, "statuses": dict(tally.statuses), "wrong": tally.wrong}
                )
    rss = _rss_report(sampler, world, warmed)
    _share_rss(ctx, rss)
    ctx.record("batch", {"rounds": rounds, "settings": _settings_json(settings)})
    ctx.record("server_rss", {"warmup_s": round(warmed, 1), "servers": rss})
    _check_rounds(rounds)
    median = statistics.median(float(r["rate"]) for r in rounds)
    ctx.shared["batch_rate"] = median
    return median


def _check_rounds(rounds: list[dict[str, Any]]) -> None:
    """A round with errors or wrong answers measured something else: say so, loudly."""
    for index, info in enumerate(rounds):
        errors = {s: n for s, n in info["statuses"].items() if s not in OK_STATUSES}
        if errors or info["wrong"]:
            raise RuntimeError(f"batch round {index}: errors {errors}, wrong {info['wrong']}")


def _share_rss(ctx: RunContext, rss: dict[str, Any]) -> None:
    growths = [s["growth_mib"] for s in rss.values() if s["growth_mib"] is not None]
    if growths:
        ctx.shared["rss_growth_mib"] = max(growths)
    if rss:
        ctx.shared["rss_peak_mib"] = max(s["peak_mib"] for s in rss.values())


def _settings_json(settings: GatewaySettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


class _Profiling:
    """While a block runs: the CPU each hot server (and this client) used per query, from
    ``/proc`` (exact, always), and py-spy recordings of the servers when ``--profile`` asked.
    Summed over the chain, CPU per query bounds the rate two cores can reach, whatever the
    servers wait for."""

    def __init__(self, ctx: RunContext, world: BenchWorld, label: str) -> None:
        self._ctx = ctx
        self._pids = {name: world.pids[name] for name in HOT_SERVERS}
        self._spy = None if ctx.profile_dir is None else PySpy(self._pids, ctx.profile_dir, label)
        self._before: dict[str, float] = {}
        self.label = label
        self.queries = 0

    def _cpu(self) -> dict[str, float]:
        used = {"bench-client": cpu_seconds()}
        for name, pid in self._pids.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                used[name] = cpu_seconds(pid)
        return used

    async def __aenter__(self) -> _Profiling:
        if self._spy is not None:
            await self._spy.__aenter__()
            if not self._spy.available:
                self._ctx.record("py_spy", "not installed: no server profiles (pip install py-spy)")
        self._before = self._cpu()
        return self

    async def __aexit__(self, *exc: object) -> None:
        after = self._cpu()
        if self._spy is not None:
            await self._spy.__aexit__(*exc)
        if not self.queries:
            return
        per_query = {
            name: round((after[name] - self._before[name]) * 1000 / self.queries, 3)
            for name in after
            if name in self._before
        }
        per_query["servers_total"] = round(
            sum(v for k, v in per_query.items() if k != "bench-client"), 3
        )
        self._ctx.extra.setdefault("cpu_ms_per_query", {})[self.label] = per_query


# --- latency -------------------------------------------------------------------------------------


async def _latencies(stub: Any, people: People, prefix: str, calls: int) -> list[float]:
    """QueryPerson one at a time, in ms, sorted; every answer must be what the person gets."""
    from linkage.v1 import common_pb2

    samples = []
    for n in range(calls):
        start = time.perf_counter_ns()
        reply = await stub.QueryPerson(_query(people, f"{prefix}-{n}", n), timeout=60)
        samples.append((time.perf_counter_ns() - start) / 1e6)
        provided = reply.result.status == common_pb2.QUERY_STATUS_PROVIDED
        if provided != people.has_pension(n):
            raise RuntimeError(f"query {prefix}-{n}: unexpected status {reply.result.status}")
    return sorted(samples)


async def _direct_latencies(world: BenchWorld, people: People, calls: int) -> list[float]:
    """The same queries' SubmitQuery straight at Sakai's platform (as ``ua.sakai``): what the
    chain takes without the unified address server, to tell its share from the rest's."""
    from linkage.v1 import intermediate_server_pb2 as pb
    from linkage.v1 import intermediate_server_pb2_grpc

    samples = []
    async with world.channel("ua.sakai", "platform-municipal") as channel:
        stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
        for n in range(calls):
            spec = pb.QuerySpec(
                query_id=f"bench-direct:{n}",
                requester_capacity="municipality",
                procedure=PROCEDURE,
                provider=PROVIDER,
                data_items=[DATA_ITEM],
                unified_number=world.sakai_unified[n % people.count],
                on_date=ON_DATE,
                business_system="bs.sakai.kouki",
            )
            start = time.perf_counter_ns()
            await stub.SubmitQuery(
                pb.SubmitQueryRequest(parent="organizations/sakai", query=spec), timeout=60
            )
            samples.append((time.perf_counter_ns() - start) / 1e6)
    return sorted(samples)


async def _paced_load(
    stub: Any, people: People, rate: float, size: int, stop: asyncio.Event
) -> int:
    """A batch stream at ``rate`` queries/s (messages of ``size``) until ``stop``; results."""
    from linkage.v1 import unified_address_pb2

    interval = size / rate

    async def requests() -> AsyncIterator[unified_address_pb2.StreamPersonQueriesRequest]:
        due, start = time.perf_counter(), 0
        while not stop.is_set():
            queries = [_query(people, f"paced-{n}", n) for n in range(start, start + size)]
            yield unified_address_pb2.StreamPersonQueriesRequest(queries=queries)
            start += size
            due += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.perf_counter()))

    answered = 0
    async for response in stub.StreamPersonQueries(requests(), timeout=600):
        answered += len(response.results)
    return answered


def _quantiles(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": nearest_rank(samples, 0.50),
        "p99_ms": nearest_rank(samples, 0.99),
        "calls": len(samples),
    }


async def measure_latency(ctx: RunContext) -> float:
    """Unloaded p50 (p99 and the loaded quantiles are left in ``ctx.shared``)."""
    settings = GatewaySettings.of(ctx)
    world = await shared_world(ctx)
    people: People = ctx.shared["people"]
    async with contextlib.AsyncExitStack() as stack:
        stub = _stub(world, stack)
        await _latencies(stub, people, "lat-warmup", settings.latency_warmup_calls)
        async with _Profiling(ctx, world, "latency") as profiling:
            unloaded = _quantiles(await _latencies(stub, people, "lat", settings.latency_calls))
            profiling.queries = settings.latency_calls
        direct = (
            _quantiles(await _direct_latencies(world, people, settings.latency_calls))
            if settings.breakdown or ctx.profile_dir is not None
            else {}
        )
        loaded = await _loaded_latency(ctx, stub, people, settings)
    ctx.record(
        "latency",
        {"unloaded": unloaded, "platform_direct": direct, "half_load": loaded},
    )
    ctx.shared["p99_ms"] = unloaded["p99_ms"]
    p50: float = unloaded["p50_ms"]
    if loaded:
        ctx.shared["loaded_p50_ms"], ctx.shared["loaded_p99_ms"] = (
            loaded["p50_ms"],
            loaded["p99_ms"],
        )
    return p50


async def _loaded_latency(
    ctx: RunContext, stub: Any, people: People, settings: GatewaySettings
) -> dict[str, Any]:
    """The same calls while a batch stream runs at half the batch maximum of this run."""
    maximum = ctx.shared.get("batch_rate")
    if not maximum:
        return {}
    rate = maximum / 2
    stop = asyncio.Event()
    load = asyncio.create_task(_paced_load(stub, people, rate, settings.loaded_message_size, stop))
    try:
        await asyncio.sleep(1.0)  # let the load settle
        samples = await _latencies(stub, people, "lat-loaded", settings.latency_calls)
    finally:
        stop.set()
    started = time.perf_counter()
    answered = await load
    return {
        **_quantiles(samples),
        "load_rate": rate,
        "load_answered": answered,
        "drain_s": round(time.perf_counter() - started, 2),
    }
