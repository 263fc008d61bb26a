"""Query (情報照会) on the requester side: submit, batch, wait, verify, keep for a while.

Owns steps 1, 4 and 5 of the query path for a requester tenant: admit queries (one row per
query id, inserted before anything is sent, so a retry never causes a second provision), send
them to the network in chunks with the tenant's query key, verify each provider's signed answer
batch (signature by directory keys, our key id, items asked for, the permit id sealed inside),
decrypt, and store the result sealed at rest until its retention ends; accept late answers after
a provider's review; let callers wait for a result (an in-process wake-up, else polling the
database so replicas work).

Must never: send a query whose row is not stored, send a query again while its first sending may
still be answered (only one that never left, or went stale, is resent: the network is
idempotent by query id), accept an answer it cannot verify as PROVIDED, keep a value in clear,
or import grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.crypto import BatchOpener
from linkage.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    LinkageError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from linkage.logs import get_logger
from linkage.records.model import AccessRecord, ActorKind
from linkage.v1 import common_pb2, intermediate_server_pb2, network_pb2, payloads_pb2
from server import repository as repo
from server.content import parse_iso_date, unified_number_problem
from server.directory import Directory
from server.models import QueryRow
from server.notify import Notifier
from server.ports import Clock, NetworkPort
from server.provision import parse
from server.querykeys import QueryKey, QueryKeys
from server.records import REQUESTER_EVENTS, Recorder, Status, record
from server.tenancy import Tenants, require_id, valid_code

log = get_logger(__name__)
QS = common_pb2.QueryStatus
FINAL = frozenset(
    {
        common_pb2.QUERY_STATUS_PROVIDED,
        common_pb2.QUERY_STATUS_NO_DATA,
        common_pb2.QUERY_STATUS_DENIED,
        common_pb2.QUERY_STATUS_DECLINED,
        common_pb2.QUERY_STATUS_FAILED,
    }
)
ANSWER_STATUSES = FINAL | {common_pb2.QUERY_STATUS_HELD_FOR_REVIEW}
JST = timezone(timedelta(hours=9), "JST")  # "today" of a query is today in Japan
MAX_ITEMS = 16
NETWORK_UNAVAILABLE = "NETWORK_UNAVAILABLE"
NO_LINKAGE_CODE = "NO_LINKAGE_CODE"
QUERY_ID_REUSED = "QUERY_ID_REUSED"
_WORD = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_PROCEDURE = re.compile(r"[a-z0-9][a-z0-9:_-]{0,63}")
_SYSTEM = re.compile(r"[A-Za-z0-9._:-]{0,128}")


# Attempts to admit a batch when other replicas insert the same query ids concurrently.
_ADMIT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated query as a business system asked it."""

    query_id: str
    requester_capacity: str
    procedure: str
    provider: str
    data_items: tuple[str, ...]
    unified_number: str
    on_date: date
    on_date_text: str  # as asked ("" for today): what a retry must repeat
    business_system: str

    def digest(self) -> bytes:
        """Fingerprint of what was asked: a retry with the same id must ask the same."""
        parts = (
            self.requester_capacity,
            self.procedure,
            self.provider,
            ",".join(self.data_items),
            self.unified_number,
            self.on_date_text,
        )
        return hashlib.sha256("\x1f".join(parts).encode()).digest()


def parse_spec(message: intermediate_server_pb2.QuerySpec, prefix: str, today: date) -> Spec:
    """A validated ``Spec``, or INVALID_ARGUMENT naming every bad field under ``prefix``.

    On the hot path of every query: each field is read from the message once, the fields a
    batch repeats (capacity, procedure, provider, items, system, date) are checked once per
    distinct value, and a query that fails any check is re-examined by ``_spec_violations``,
    which reports every bad field.
    """
    query_id = message.query_id
    capacity = message.requester_capacity
    procedure = message.procedure
    provider = message.provider
    items = tuple(message.data_items)
    number = message.unified_number
    on_text = message.on_date
    system = message.business_system
    on = _iso_date(on_text) if on_text else today
    if (
        on is not None
        and _shared_fields_valid(capacity, procedure, provider, items, system)
        and _is_id(query_id)
        and unified_number_problem(number) is None
    ):
        return Spec(query_id, capacity, procedure, provider, items, number, on, on_text, system)
    return _spec_violations(message, prefix, today)


@functools.lru_cache(maxsize=4096)
def _shared_fields_valid(
    capacity: str, procedure: str, provider: str, items: tuple[str, ...], system: str
) -> bool:
    """The checks of ``_spec_violations`` on the fields queries of a batch share."""
    return (
        _WORD.fullmatch(capacity) is not None
        and _PROCEDURE.fullmatch(procedure) is not None
        and valid_code(provider)
        and 0 < len(items) <= MAX_ITEMS
        and len(set(items)) == len(items)
        and all(_WORD.fullmatch(item) for item in items)
        and _SYSTEM.fullmatch(system) is not None
    )


def _is_id(value: str) -> bool:
    try:
        require_id(value, "query_id")
    except InvalidArgument:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _iso_date(text: str) -> date | None:
    return parse_iso_date(text)


def _spec_violations(message: intermediate_server_pb2.QuerySpec, prefix: str, today: date) -> Spec:
    """``parse_spec`` the slow way: every rule, every bad field reported."""
    bad: list[FieldViolation] = []

    def check(ok: bool, name: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"{prefix}.{name}", description))

    try:
        require_id(message.query_id, f"{prefix}.query_id")
    except InvalidArgument as error:
        bad.extend(error.violations)
    check(
        bool(_WORD.fullmatch(message.requester_capacity)), "requester_capacity", "not a capacity id"
    )
    check(bool(_PROCEDURE.fullmatch(message.procedure)), "procedure", "not a procedure id")
    check(valid_code(message.provider), "provider", "not an organization code")
    items = tuple(message.data_items)
    check(0 < len(items) <= MAX_ITEMS, "data_items", f"1..{MAX_ITEMS} data items")
    check(len(set(items)) == len(items), "data_items", "a data item is repeated")
    check(all(_WORD.fullmatch(item) for item in items), "data_items", "not a data item id")
    problem = unified_number_problem(message.unified_number)
    check(problem is None, "unified_number", problem or "")
    on = parse_iso_date(message.on_date) if message.on_date else today
    check(on is not None, "on_date", "must be a date YYYY-MM-DD or empty")
    check(bool(_SYSTEM.fullmatch(message.business_system)), "business_system", "malformed id")
    if bad:
        raise InvalidArgument("INVALID_QUERY", f"bad query: {bad[0].field}", violations=bad)
    assert on is not None
    return Spec(
        message.query_id,
        message.requester_capacity,
        message.procedure,
        message.provider,
        items,
        message.unified_number,
        on,
        message.on_date,
        message.business_system,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a query stands, as the business system sees it (values decrypted)."""

    tenant: str
    query_id: str
    status: Status
    reason: str = ""
    permit_id: str = ""
    values: tuple[common_pb2.DuplicateValue, ...] = ()
    updated_at: datetime | None = None
    expires_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(slots=True)
class _Result:
    """A verified answer (or a failure) for one of our queries, before it is stored."""

    query_id: str
    status: Status
    reason: str = ""
    permit_id: str = ""
    values: list[common_pb2.DuplicateValue] = field(default_factory=list)
    key_id: str = ""


@dataclass(slots=True)
class _Admission:
    ready: list[Outcome] = field(default_factory=list)
    send: list[tuple[Spec, str]] = field(default_factory=list)  # (spec, our linkage code)
    wait: list[str] = field(default_factory=list)


def result_context(tenant: str, query_id: str) -> bytes:
    return f"server.query_result|{tenant}|{query_id}".encode()


class Requester:
    """The requester side of a platform's tenants."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenants: Tenants,
        network: NetworkPort,
        directory: Directory,
        keys: QueryKeys,
        recorder: Recorder,
        clock: Clock,
        *,
        retention: timedelta,
        chunk_size: int = 500,
        max_in_flight: int = 4,
        resend_after: timedelta = timedelta(seconds=60),
        poll_interval: float = 0.2,
        linger: float = 0.002,
    ) -> None:
        self._sessions = sessions
        self._tenants = tenants
        self._network = network
        self._directory = directory
        self._keys = keys
        self._recorder = recorder
        self._clock = clock
        self._retention = retention
        self._chunk_size = chunk_size
        self._max_in_flight = max_in_flight
        self._resend_after = resend_after
        self._poll_interval = poll_interval
        self._linger = linger
        self._sending: set[tuple[str, str]] = set()  # queries this process is sending now
        self._notifier = Notifier()
        self._background: set[asyncio.Task[object]] = set()
        self._gathering: dict[str, _Gathering] = {}  # single queries waiting to go, by tenant
        self._groups_in_flight: dict[str, int] = {}

    def today(self) -> date:
        return self._clock().astimezone(JST).date()

    # --- entry points ------------------------------------------------------------------------

    async def submit(self, tenant: str, spec: Spec, *, wait: float) -> Outcome:
        """One query, waiting up to ``wait`` seconds for it to leave the platform.

        Concurrent single queries of a tenant travel together: while ``max_in_flight`` groups
        are on their way, new ones gather into the next group (up to ``chunk_size``), so under
        load the network sees batches and the database one transaction per group, and an
        unloaded query leaves at once.
        """
        future = self._gather(tenant, spec, wait)
        outcome = await asyncio.shield(future)  # a caller giving up must not cancel the group
        if outcome.status == common_pb2.QUERY_STATUS_FAILED and outcome.reason == NO_LINKAGE_CODE:
            raise FailedPrecondition(NO_LINKAGE_CODE, "the person has no linkage code here yet")
        if outcome.status == common_pb2.QUERY_STATUS_FAILED and outcome.reason == QUERY_ID_REUSED:
            raise AlreadyExists(
                QUERY_ID_REUSED, "this query id was already used for a different query"
            )
        if (
            outcome.status == common_pb2.QUERY_STATUS_IN_FLIGHT
            and outcome.reason == NETWORK_UNAVAILABLE
        ):
            raise Unavailable(NETWORK_UNAVAILABLE, "the network could not be reached; retry")
        return outcome

    def _gather(self, tenant: str, spec: Spec, wait: float) -> asyncio.Future[Outcome]:
        group = self._gathering.get(tenant)
        if group is not None and not group.accepts(spec):
            self._flush(tenant)  # the same id asked differently: keep it out of this group
            group = None
        if group is None:
            group = self._gathering[tenant] = _Gathering()
        future = group.add(spec, wait)
        if (
            self._groups_in_flight.get(tenant, 0) < self._max_in_flight
            or len(group.specs) >= self._chunk_size
        ):
            self._flush(tenant)
        return future

    def _flush(self, tenant: str) -> None:
        group = self._gathering.pop(tenant, None)
        if group is None or not group.specs:
            return
        self._groups_in_flight[tenant] = self._groups_in_flight.get(tenant, 0) + 1
        self._keep(asyncio.create_task(self._run_group(tenant, group)))

    async def _run_group(self, tenant: str, group: _Gathering) -> None:
        try:
            async for outcomes in self._run(tenant, group.specs, group.wait):
                group.resolve(outcomes)
            if group.futures:  # answered by nobody (cannot happen): say what is stored
                for query_id in list(group.futures):
                    group.resolve([await self.get(tenant, query_id, wait=0)])
        except BaseException as error:
            group.fail(error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._groups_in_flight[tenant] -= 1
            if tenant in self._gathering:
                self._flush(tenant)  # whoever gathered meanwhile goes now

    async def stream(
        self, tenant: str, batches: AsyncIterator[list[Spec]], *, wait: float = 30.0
    ) -> AsyncIterator[list[Outcome]]:
        """Batch queries (一括照会): specs in, outcomes out as each chunk completes.

        Specs are grouped into chunks of up to ``chunk_size`` (waiting ``linger`` seconds for
        more to arrive) and up to ``max_in_flight`` chunks are sent at once.
        """
        queue: asyncio.Queue[Spec | None] = asyncio.Queue(maxsize=4 * self._chunk_size)
        out: asyncio.Queue[list[Outcome] | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(batches, queue))
        batcher = asyncio.create_task(self._batch(tenant, queue, out, wait))
        try:
            while True:
                item = await out.get()
                if item is None:
                    await reader  # the input ended: raise its error (a bad message), if any
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not reader.done():
                reader.cancel()
            if not batcher.done():
                # The caller went away: what was sent still gets its results stored.
                self._keep(batcher)

    async def get(self, tenant: str, query_id: str, *, wait: float) -> Outcome:
        """The stored outcome, waiting up to ``wait`` seconds for it to become final."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        key = (tenant, query_id)
        while True:
            event = self._notifier.register(key)
            try:
                outcome = await asyncio.to_thread(self._read_outcome, tenant, query_id)
                remaining = deadline - loop.time()
                if outcome is None:
                    raise NotFound("QUERY_NOT_FOUND", "no such query (or its result was deleted)")
                if outcome.final or remaining <= 0:
                    return outcome
                # On timeout, poll the database: another replica may have stored it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self._poll_interval))
            finally:
                self._notifier.release(key, event)

    async def accept_late(self, envelope: common_pb2.SignedEnvelope) -> int:
        """Step 5: a provider's answer released after review, routed by the network."""
        provider = envelope.signer
        body = await self._directory.open(envelope, provider, reason="ANSWER_SIGNATURE_INVALID")
        batch = parse(payloads_pb2.AnswerBatch, body, "ANSWER_BATCH_MALFORMED")
        assert isinstance(batch, payloads_pb2.AnswerBatch)
        if batch.provider != provider:
            raise InvalidArgument("ANSWER_BATCH_MISADDRESSED", "batch provider is not the signer")
        tenant = self._tenants.get(batch.requester).code
        ids = [answer.query_id for answer in batch.answers]
        rows = await asyncio.to_thread(self._rows, tenant, ids)
        key = await self._keys.find_async(tenant, batch.requester_key_id)
        if key is None and any(a.status == common_pb2.QUERY_STATUS_PROVIDED for a in batch.answers):
            raise InvalidArgument("UNKNOWN_REQUESTER_KEY", "answers are sealed to no key of ours")
        opener = _Opener(batch.requester_key_id, key, batch.ephemeral_public_key)
        now = self._clock()
        results: list[_Result] = []
        specs: dict[str, Spec] = {}
        for answer in batch.answers:
            row = rows.get(answer.query_id)
            if row is None or row.provider != provider or row.status in FINAL:
                continue  # unknown, not from this provider, or already settled
            if row.expires_at <= now:
                continue  # past retention: the requester no longer keeps this query
            if row.permit_id and row.permit_id != answer.permit_id:
                continue
            spec = _spec_of(row)
            specs[spec.query_id] = spec
            results.append(_read_answer(spec, answer, answer.permit_id, opener))
        if not results:
            return 0
        stored = await asyncio.to_thread(self._store, tenant, specs, results)
        self._notifier.publish((tenant, outcome.query_id) for outcome in stored)
        return sum(1 for outcome in stored if outcome.final)

    async def close(self) -> None:
        """Wait for background sends (a stream whose caller left) to finish storing."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # --- the pipeline --------------------------------------------------------------------------

    async def _read(
        self, batches: AsyncIterator[list[Spec]], queue: asyncio.Queue[Spec | None]
    ) -> None:
        try:
            async for specs in batches:
                for spec in specs:
                    await queue.put(spec)
        finally:
            await queue.put(None)  # always end the batcher, even after a bad message

    async def _batch(
        self,
        tenant: str,
        queue: asyncio.Queue[Spec | None],
        out: asyncio.Queue[list[Outcome] | BaseException | None],
        wait: float,
    ) -> None:
        limit = asyncio.Semaphore(self._max_in_flight)
        running: set[asyncio.Task[None]] = set()

        async def run(chunk: list[Spec]) -> None:
            try:
                async for outcomes in self._run(tenant, chunk, wait):
                    await out.put(outcomes)
            except BaseException as error:
                await out.put(error)
                raise
            finally:
                limit.release()

        done = False
        while not done:
            chunk, done = await self._next_chunk(queue)
            if chunk:
                await limit.acquire()
                task = asyncio.create_task(run(chunk))
                running.add(task)
                task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await out.put(None)

    async def _next_chunk(self, queue: asyncio.Queue[Spec | None]) -> tuple[list[Spec], bool]:
        """Up to chunk_size specs: the first one waits, the rest only ``linger`` seconds."""
        first = await queue.get()
        if first is None:
            return [], True
        chunk = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        while len(chunk) < self._chunk_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return chunk, True
            chunk.append(item)
        return chunk, False

    async def _run(
        self, tenant: str, specs: Sequence[Spec], wait: float
    ) -> AsyncIterator[list[Outcome]]:
        """Admit, send and wait for one group of specs; yields outcomes as they are known."""
        admission = await asyncio.to_thread(self._admit_with_retry, tenant, specs)
        if admission.ready:
            yield admission.ready
        sends = self._group(admission.send)
        for spec, _ in admission.send:
            self._sending.add((tenant, spec.query_id))
        tasks = [asyncio.create_task(self._dispatch(tenant, cap, group)) for cap, group in sends]
        for task in tasks:
            self._keep(task)  # results are stored even if our caller stops listening
        waits = [asyncio.create_task(self.get(tenant, qid, wait=wait)) for qid in admission.wait]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
            if waits:
                settled = await asyncio.gather(*waits, return_exceptions=True)
                yield [
                    item
                    if isinstance(item, Outcome)
                    else Outcome(tenant, qid, common_pb2.QUERY_STATUS_FAILED, _error_reason(item))
                    for qid, item in zip(admission.wait, settled, strict=True)
                ]
        finally:
            for waiting in waits:
                waiting.cancel()

    def _group(self, send: list[tuple[Spec, str]]) -> list[tuple[str, list[tuple[Spec, str]]]]:
        """One network call per requester capacity (the request carries one) and chunk."""
        by_capacity: dict[str, list[tuple[Spec, str]]] = {}
        for spec, code in send:
            by_capacity.setdefault(spec.requester_capacity, []).append((spec, code))
        return [
            (capacity, group[start : start + self._chunk_size])
            for capacity, group in by_capacity.items()
            for start in range(0, len(group), self._chunk_size)
        ]

    # --- admission -----------------------------------------------------------------------------

    def _admit_with_retry(self, tenant: str, specs: Sequence[Spec]) -> _Admission:
        # Another replica may insert some of these query ids between our read and our insert;
        # re-reading then finds them as existing. With several replicas racing on one batch
        # that can happen more than once, so retry a few times before giving up.
        for _ in range(_ADMIT_ATTEMPTS - 1):
            try:
                return self._admit(tenant, specs)
            except IntegrityError:
                continue
        return self._admit(tenant, specs)

    def _admit(self, tenant: str, specs: Sequence[Spec]) -> _Admission:
        """Insert new queries (one transaction) and sort every spec: answer now, send, wait."""
        admission = _Admission()
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            existing = repo.queries_by_id(session, tenant, (s.query_id for s in specs))
            codes = repo.codes_by_unified_number(session, tenant, (s.unified_number for s in specs))
            inserts: list[tuple[object, ...]] = []
            failures: list[AccessRecord] = []
            seen: set[str] = set()
            for spec in specs:
                if spec.query_id in seen:
                    admission.wait.append(spec.query_id)  # same id twice in one request
                    continue
                seen.add(spec.query_id)
                row = existing.get(spec.query_id)
                if row is not None:
                    self._admit_existing(tenant, spec, row, codes, admission, now)
                    continue
                code = codes.get(spec.unified_number)
                if code is None:
                    admission.ready.append(
                        Outcome(
                            tenant, spec.query_id, common_pb2.QUERY_STATUS_FAILED, NO_LINKAGE_CODE
                        )
                    )
                    failures.append(
                        self._record(
                            tenant,
                            spec,
                            _Result(spec.query_id, common_pb2.QUERY_STATUS_FAILED, NO_LINKAGE_CODE),
                            now,
                        )
                    )
                    continue
                inserts.append(self._new_row(spec))
                admission.send.append((spec, code))
            repo.insert_queries(session, tenant, inserts, now, now + self._retention)
            self._recorder.append(session, failures)
        return admission

    def _admit_existing(
        self,
        tenant: str,
        spec: Spec,
        row: QueryRow,
        codes: dict[str, str],
        admission: _Admission,
        now: datetime,
    ) -> None:
        if row.spec_digest != spec.digest():
            admission.ready.append(
                Outcome(tenant, spec.query_id, common_pb2.QUERY_STATUS_FAILED, QUERY_ID_REUSED)
            )
        elif row.status != common_pb2.QUERY_STATUS_IN_FLIGHT or row.expires_at <= now:
            admission.ready.append(self._outcome_of(row))
        elif (tenant, spec.query_id) in self._sending:
            admission.wait.append(spec.query_id)
        elif row.reason == NETWORK_UNAVAILABLE or row.updated_at <= now - self._resend_after:
            # It never reached the network, or its sender died: sending again is safe because
            # the network answers a repeated query id with the stored answer.
            code = codes.get(spec.unified_number)
            if code is None:
                admission.ready.append(self._outcome_of(row))
            else:
                admission.send.append((spec, code))
        else:
            admission.wait.append(spec.query_id)  # another replica is sending it

    @staticmethod
    def _new_row(spec: Spec) -> tuple[object, ...]:
        """A new query's row, in ``repo.QUERY_COLUMNS`` order."""
        return (
            spec.query_id,
            spec.digest(),
            spec.requester_capacity,
            spec.procedure,
            spec.provider,
            " ".join(spec.data_items),
            spec.unified_number,
            spec.on_date,
            spec.business_system,
        )

    # --- sending -------------------------------------------------------------------------------

    async def _dispatch(
        self, tenant: str, capacity: str, group: list[tuple[Spec, str]]
    ) -> list[Outcome]:
        specs = {spec.query_id: spec for spec, _ in group}
        try:
            key = await self._keys.current_async(tenant)
            request = network_pb2.SubmitQueriesRequest(
                requester=tenant, requester_capacity=capacity, requester_key=key.envelope
            )
            _fill_submissions(request, group)
            try:
                response = await self._network.submit_queries(tenant, request)
            except (Unavailable, ResourceExhausted):
                await asyncio.to_thread(self._mark_unsent, tenant, list(specs), NETWORK_UNAVAILABLE)
                return [
                    Outcome(tenant, qid, common_pb2.QUERY_STATUS_IN_FLIGHT, NETWORK_UNAVAILABLE)
                    for qid in specs
                ]
            except LinkageError as error:
                # The network refused the whole batch (not transient): every query fails.
                log.warning("batch_refused", tenant=tenant, reason=error.reason)
                results = [
                    _Result(qid, common_pb2.QUERY_STATUS_FAILED, _reason(error.reason))
                    for qid in specs
                ]
            else:
                results = await self._verify(tenant, specs, response)
            outcomes = await asyncio.to_thread(self._store, tenant, specs, results)
            self._notifier.publish((tenant, qid) for qid in specs)
            return outcomes
        finally:
            for qid in specs:
                self._sending.discard((tenant, qid))

    def _mark_unsent(self, tenant: str, query_ids: list[str], reason: str) -> None:
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            repo.mark_dispatch_failed(session, tenant, query_ids, reason, self._clock())

    async def _verify(
        self, tenant: str, specs: dict[str, Spec], response: network_pb2.SubmitQueriesResponse
    ) -> list[_Result]:
        """Step 4: turn dispositions and signed answer batches into verified results."""
        results: dict[str, _Result] = {}
        permits: dict[str, str] = {}
        for disposition in response.dispositions:
            spec = specs.get(disposition.query_id)
            if spec is None:
                continue
            permits[spec.query_id] = disposition.permit_id
            if disposition.status in (
                common_pb2.QUERY_STATUS_DENIED,
                common_pb2.QUERY_STATUS_FAILED,
            ):
                results[spec.query_id] = _Result(
                    spec.query_id,
                    disposition.status,
                    _reason(disposition.reason),
                    disposition.permit_id,
                )
        bad_batches: dict[str, str] = {}
        unverified: set[str] = set()
        for envelope in response.answer_batches:
            try:
                batch, opener = await self._open_answers(tenant, envelope)
            except InvalidArgument as error:
                bad_batches[envelope.signer] = error.reason
                continue
            except (Unavailable, ResourceExhausted):
                # The directory could not be read to check the signature. The network keeps
                # the answer batch, so these stay in flight and a retry fetches it again.
                unverified.add(envelope.signer)
                continue
            for answer in batch.answers:
                spec = specs.get(answer.query_id)
                if spec is None or spec.provider != batch.provider or answer.query_id in results:
                    continue
                if not answer.permit_id or answer.permit_id != permits.get(answer.query_id):
                    results[answer.query_id] = _Result(
                        answer.query_id, common_pb2.QUERY_STATUS_FAILED, "ANSWER_PERMIT_MISMATCH"
                    )
                    continue
                results[answer.query_id] = _read_answer(spec, answer, answer.permit_id, opener)
        for qid, spec in specs.items():
            if qid in results:
                continue
            if spec.provider in unverified:
                results[qid] = _Result(qid, common_pb2.QUERY_STATUS_IN_FLIGHT, NETWORK_UNAVAILABLE)
                continue
            reason = bad_batches.get(spec.provider, "ANSWER_MISSING")
            results[qid] = _Result(
                qid, common_pb2.QUERY_STATUS_FAILED, reason, permits.get(qid, "")
            )
        return list(results.values())

    async def _open_answers(
        self, tenant: str, envelope: common_pb2.SignedEnvelope
    ) -> tuple[payloads_pb2.AnswerBatch, _Opener]:
        provider = envelope.signer
        body = await self._directory.open(envelope, provider, reason="ANSWER_SIGNATURE_INVALID")
        batch = parse(payloads_pb2.AnswerBatch, body, "ANSWER_BATCH_MALFORMED")
        assert isinstance(batch, payloads_pb2.AnswerBatch)
        if batch.provider != provider or batch.requester != tenant:
            raise InvalidArgument("ANSWER_BATCH_MISADDRESSED", "answer batch names other parties")
        key = await self._keys.find_async(tenant, batch.requester_key_id)
        if key is None:
            raise InvalidArgument("UNKNOWN_REQUESTER_KEY", "answers sealed to a key not ours")
        return batch, _Opener(batch.requester_key_id, key, batch.ephemeral_public_key)

    # --- storing -------------------------------------------------------------------------------

    def _store(
        self, tenant: str, specs: dict[str, Spec], results: Sequence[_Result]
    ) -> list[Outcome]:
        """Store results and their records in one transaction; outcomes as stored."""
        now = self._clock()
        expires = now + self._retention
        data_key = self._tenants.get(tenant).data_key
        rows: list[repo.ResultRow] = []
        for result in results:
            sealed = None
            if result.values:
                content = payloads_pb2.SealedContent(
                    permit_id=result.permit_id, values=result.values
                ).SerializeToString()
                sealed = data_key.encrypt(content, context=result_context(tenant, result.query_id))
            rows.append(
                (
                    result.query_id,
                    result.permit_id,
                    result.status,
                    result.reason,
                    result.key_id,
                    sealed,
                )
            )
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            changed = repo.store_results(session, tenant, rows, now, expires)
            if changed == len(rows):
                self._recorder.append(
                    session,
                    [
                        self._record(tenant, specs[r.query_id], r, now)
                        for r in results
                        if r.status in REQUESTER_EVENTS  # still in flight: nothing happened yet
                    ],
                )
                return [
                    Outcome(
                        tenant,
                        r.query_id,
                        r.status,
                        r.reason,
                        r.permit_id,
                        tuple(r.values),
                        now,
                        expires,
                    )
                    for r in results
                ]
        # Some were settled meanwhile (a late answer overtook the reply): record what we did
        # store and report what the database holds.
        return self._settle_race(tenant, specs, results, now)

    def _settle_race(
        self, tenant: str, specs: dict[str, Spec], results: Sequence[_Result], now: datetime
    ) -> list[Outcome]:
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            stored = repo.queries_by_id(session, tenant, (r.query_id for r in results))
            records = [
                self._record(tenant, specs[r.query_id], r, now)
                for r in results
                if (row := stored.get(r.query_id)) is not None
                and row.status == r.status
                and row.updated_at == now
                and r.status in REQUESTER_EVENTS
            ]
            self._recorder.append(session, records)
        return [self._outcome_of(row) for row in stored.values()]

    def _record(self, tenant: str, spec: Spec, result: _Result, now: datetime) -> AccessRecord:
        event, outcome = REQUESTER_EVENTS[result.status]
        items = [value.data_item for value in result.values] or list(spec.data_items)
        return record(
            tenant=tenant,
            at=now,
            event=event,
            outcome=outcome,
            actor_kind=ActorKind.BUSINESS_SYSTEM,
            actor_id=spec.business_system or tenant,
            procedure=spec.procedure,
            requester=tenant,
            provider=spec.provider,
            data_items=items,
            subject=spec.unified_number,
            permit_id=result.permit_id,
            query_id=spec.query_id,
            reason=result.reason,
        )

    # --- reading -------------------------------------------------------------------------------

    def _rows(self, tenant: str, query_ids: Iterable[str]) -> dict[str, QueryRow]:
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            return repo.queries_by_id(session, tenant, query_ids)

    def _read_outcome(self, tenant: str, query_id: str) -> Outcome | None:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            row = session.get(QueryRow, (tenant, query_id))
        if row is None or row.expires_at <= now:
            return None  # past retention it is gone, whether or not the purge has run
        return self._outcome_of(row)

    def _outcome_of(self, row: QueryRow) -> Outcome:
        values: tuple[common_pb2.DuplicateValue, ...] = ()
        if row.result is not None:
            data_key = self._tenants.get(row.tenant).data_key
            plaintext = data_key.decrypt(
                row.result, context=result_context(row.tenant, row.query_id)
            )
            values = tuple(payloads_pb2.SealedContent.FromString(plaintext).values)
        return Outcome(
            row.tenant,
            row.query_id,
            QS.ValueType(row.status),
            row.reason,
            row.permit_id,
            values,
            row.updated_at,
            row.expires_at,
        )

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Gathering:
    """Single queries of one tenant gathered to travel together, with their callers."""

    def __init__(self) -> None:
        self.specs: list[Spec] = []
        self.futures: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._digests: dict[str, bytes] = {}
        self.wait = 0.0

    def accepts(self, spec: Spec) -> bool:
        digest = self._digests.get(spec.query_id)
        return digest is None or digest == spec.digest()

    def add(self, spec: Spec, wait: float) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if spec.query_id not in self._digests:
            self._digests[spec.query_id] = spec.digest()
            self.specs.append(spec)
        self.futures.setdefault(spec.query_id, []).append(future)
        self.wait = max(self.wait, wait)
        return future

    def resolve(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            for future in self.futures.pop(outcome.query_id, ()):
                if not future.done():
                    future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        for futures in self.futures.values():
            for future in futures:
                if future.done():
                    continue
                if isinstance(error, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(error)
        self.futures.clear()


class _Opener:
    """Opens the answers of one batch: one key agreement, made only if something is sealed.

    ``key`` is None when the batch names a key we no longer hold: answers without content
    (a refusal, no data) can still be read, a sealed one cannot.
    """

    def __init__(self, key_id: str, key: QueryKey | None, ephemeral_public_key: bytes) -> None:
        self.key_id = key_id
        self._key = key
        self._ephemeral = ephemeral_public_key
        self._opener: BatchOpener | None = None

    def open(self, nonce: bytes, ciphertext: bytes) -> bytes:
        if self._key is None:
            raise InvalidArgument("UNKNOWN_REQUESTER_KEY", "sealed to a key we no longer hold")
        if self._opener is None:
            self._opener = BatchOpener(self._key.private_key, self._ephemeral)
        return self._opener.open(nonce, ciphertext)


def _fill_submissions(
    request: network_pb2.SubmitQueriesRequest, group: Sequence[tuple[Spec, str]]
) -> None:
    """One QuerySubmission per (spec, our linkage code), in order. The fields queries of a
    batch share (procedure, provider, items, date) are set once in a template and copied:
    one copy costs less than setting them field by field."""
    templates: dict[tuple[str, str, tuple[str, ...], date], network_pb2.QuerySubmission] = {}
    add = request.queries.add
    for spec, code in group:
        shared = (spec.procedure, spec.provider, spec.data_items, spec.on_date)
        template = templates.get(shared)
        if template is None:
            template = templates[shared] = network_pb2.QuerySubmission(
                procedure=spec.procedure,
                provider=spec.provider,
                data_items=spec.data_items,
                on_date=spec.on_date.isoformat(),
            )
        submission = add()
        submission.CopyFrom(template)
        submission.query_id = spec.query_id
        submission.linkage_code = code


def _read_answer(
    spec: Spec, answer: payloads_pb2.Answer, permit_id: str, opener: _Opener
) -> _Result:
    """Check one answer against what we asked and open it (step 4)."""

    def failed(reason: str) -> _Result:
        return _Result(
            spec.query_id, common_pb2.QUERY_STATUS_FAILED, reason, permit_id, key_id=opener.key_id
        )

    status = answer.status
    if status not in ANSWER_STATUSES:
        return failed("ANSWER_STATUS_INVALID")
    answered = set(answer.data_items)
    if not answered.issubset(spec.data_items):
        return failed("ANSWER_ITEMS_NOT_ASKED")
    if status != common_pb2.QUERY_STATUS_PROVIDED:
        return _Result(
            spec.query_id,
            status,
            _reason(answer.reason),
            permit_id,
            key_id=opener.key_id,
        )
    try:
        plaintext = opener.open(answer.nonce, answer.ciphertext)
    except InvalidArgument as error:
        return failed(error.reason)
    try:
        content = payloads_pb2.SealedContent.FromString(plaintext)
    except Exception:  # a DecodeError: the provider sealed garbage
        return failed("SEALED_CONTENT_MALFORMED")
    if content.permit_id != permit_id:
        return failed("SEALED_PERMIT_MISMATCH")
    values = list(content.values)
    if not values or any(v.data_item not in answered for v in values):
        return failed("ANSWER_ITEMS_NOT_ASKED")
    return _Result(
        spec.query_id,
        common_pb2.QUERY_STATUS_PROVIDED,
        "",
        permit_id,
        values,
        key_id=opener.key_id,
    )


def _error_reason(error: BaseException) -> str:
    """The reason to report for a query whose wait failed (say, deleted meanwhile)."""
    if isinstance(error, LinkageError):
        return error.reason
    if isinstance(error, Exception):
        return "INTERNAL"
    raise error  # cancellation and exits are not outcomes


def _spec_of(row: QueryRow) -> Spec:
    return Spec(
        row.query_id,
        row.requester_capacity,
        row.procedure,
        row.provider,
        tuple(row.data_items.split()),
        row.unified_number,
        row.on_date,
        "",
        row.business_system,
    )


_UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")


def _reason(text: str) -> str:
    """A reason from another party, kept only if it is UPPER_SNAKE (records refuse others)."""
    if not text:
        return ""
    return text if _UPPER_SNAKE.fullmatch(text) and len(text) <= 64 else "UNSPECIFIED_REASON"
