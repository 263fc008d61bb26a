"""The producing half of a bulk duplicate import: rows checked, versioned, sealed, in chunks.

``linkage duplicates import FILE`` splits the work in two so both cores work: a worker process
(``start_worker``, forked before the heavy imports of the storing side) reads and checks the
file (``server.duplicates_rows``), works out each row's version against the snapshot of the
newest stored versions the storing side sends it (``Setup``), seals each content at rest and
sends chunks of rows in the driver's own form; the storing side (``server.duplicates_bulk``)
inserts each chunk as it arrives, inside its one transaction. ``produce`` is the same work as a
generator, used directly (no process) for small files or where ``fork`` is not available.

Protocol (pickles over two pipes): the storing side sends one ``Setup``; the producer sends
``("rows", Chunk)`` messages, then one ``("end", Summary)`` (or ``("crash", reason)``). Once a
line is bad, it sends ``("failed", None)`` and no more rows, and the summary carries the errors
(the storing side then rolls back: nothing is stored); the file is still read to the end to
report every bad line up to a limit.

Must never: send or print a plaintext content (only sealed tokens leave the producer; errors
name fields, never values), write to the database, or import SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import select
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # loaded by the worker after the fork, in parallel with the parent
    from linkage.atrest import DataKey
    from server.duplicates_file import LineError
    from server.duplicates_rows import Row

MAX_IMPORT_RECORDS = 5_000_000  # as the RPC's ImportBuffer
MAX_ERRORS = 50
CHUNK_ROWS = 2_000
POLL_EVERY = 1_000  # rows read between looks for the setup
MAX_BACKLOG = 200_000  # rows read ahead of the setup, then wait for it
# The driver-form row, in this column order (``server.duplicates_bulk`` builds its INSERT).
COLUMNS = (
    "unified_number",
    "data_item",
    "version",
    "effective_from",
    "effective_to",
    "content",
    "is_latest",
    "replaced_at",
    "tenant",
    "import_id",
    "business_system",
    "created_at",
)
_DAY = timedelta(days=1)
PUMP_WAIT = 0.1  # seconds a pump thread waits for room before looking whether to stop

# (unified_number, data_item, row id, version, effective_from, effective_to)
Latest = tuple[str, str, int, int, date, date | None]


def shard_of(unified_number: str, shards: int) -> int:
    """Which of ``shards`` workers owns a person: every row of one person goes to the same
    worker, so each works out versions and supersessions alone."""
    return zlib.crc32(unified_number.encode()) % shards


def content_context(tenant: str, unified_number: str, data_item: str, version: int) -> bytes:
    """Where a sealed content belongs: a token copied elsewhere fails to open."""
    return f"server.duplicate|{tenant}|{unified_number}|{data_item}|{version}".encode()


@dataclass(frozen=True, slots=True)
class DbForm:
    """How values reach the driver, decided by the storing side from its dialect."""

    iso_dates: bool  # dates as "YYYY-MM-DD" text (SQLite) or as date objects
    true: Any
    false: Any
    replaced_at: Any  # the import's time, as a replaced_at value
    constants: tuple[Any, ...]  # tenant, import_id, business_system, created_at


@dataclass(frozen=True, slots=True)
class Setup:
    """What the producer needs from the storing side before it can seal."""

    tenant: str
    form: DbForm
    latest: list[Latest]  # the newest stored version of each key the import may touch
    key_path: str  # the tenant's data key file (a forked worker loads it itself)
    store: bool = True  # False: the import id is done already, only check the file
    chunk_rows: int = CHUNK_ROWS


@dataclass(slots=True)
class Summary:
    """The end of a stream: counts, the changes to rows already sent or stored, errors."""

    imported: int = 0
    superseded: int = 0
    # (row id, new effective_to, replaced outright) of stored versions a row supersedes
    db_changes: list[tuple[int, date | None, bool]] = field(default_factory=list)
    # (effective_to, replaced_at, unified_number, data_item, version) of rows already sent
    fixups: list[tuple[Any, Any, str, str, int]] = field(default_factory=list)
    flagged: set[tuple[str, str]] = field(default_factory=set)
    data_items: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    error_lines: list[int] = field(default_factory=list)  # the line of each of ``errors``


@dataclass(frozen=True, slots=True)
class Chunk:
    """Sealed rows by column, each value in driver form; ``changed``: position → (effective_to,
    replaced_at) of rows a later row of the same chunk superseded (then no longer latest)."""

    numbers: list[str]
    items: list[str]
    versions: list[int]
    starts: list[Any]
    ends: list[Any]
    tokens: list[bytes]
    changed: dict[int, tuple[Any, Any]]

    def __len__(self) -> int:
        return len(self.numbers)

    def rows(self, form: DbForm) -> list[tuple[Any, ...]]:
        """The rows in ``COLUMNS`` order."""
        count = len(self.numbers)
        ends = self.ends
        latest = [form.true] * count
        replaced: list[Any] = [None] * count
        if self.changed:
            ends = list(ends)
            for position, (effective_to, replaced_at) in self.changed.items():
                ends[position] = effective_to
                latest[position] = form.false
                replaced[position] = replaced_at
        return list(
            zip(
                self.numbers,
                self.items,
                self.versions,
                self.starts,
                ends,
                self.tokens,
                latest,
                replaced,
                *(repeat(constant, count) for constant in form.constants),
                strict=True,
            )
        )


Message = tuple[str, Any]


class Sealer:
    """Versions and seals rows in stream order, handing them out in driver form by chunk.

    A new value of a (person, item) supersedes the newest one, stored or earlier in the file:
    the version goes up by one, the old value's open or overlapping period is closed the day
    before the new one starts, or the old value is replaced outright when the new one starts no
    later (``server.duplicates._VersionPlan``, the same rules). A superseded row still in the
    current chunk is changed in place; one already sent becomes a fixup for the storing side.
    """

    def __init__(self, setup: Setup, key: DataKey) -> None:
        self._key = key
        self._form = setup.form
        self._prefix = f"server.duplicate|{setup.tenant}|"
        # key → (ident, version, start, end); ident ≥ 0: index in this import, < 0: -1 - row id
        self._heads: dict[tuple[str, str], tuple[int, int, date, date | None]] = {
            (number, item): (-1 - row_id, version, start, end)
            for number, item, row_id, version, start, end in setup.latest
        }
        self._dates: dict[date | None, Any] = {None: None}
        self._count = 0
        self._chunk_start = 0
        # The pending chunk by column (the storing side zips them into rows; every other
        # column is the same for each row but the few superseded within the chunk).
        self._numbers: list[str] = []
        self._items: list[str] = []
        self._versions: list[int] = []
        self._starts: list[Any] = []
        self._ends: list[Any] = []
        self._changed: dict[int, tuple[Any, Any]] = {}  # position → (effective_to, replaced_at)
        self._plaintexts: list[bytes] = []
        self._contexts: list[bytes] = []
        self.summary = Summary()

    @property
    def pending(self) -> int:
        return len(self._numbers)

    def _date(self, value: date | None) -> Any:
        try:
            return self._dates[value]
        except KeyError:
            assert value is not None
            form = value.isoformat() if self._form.iso_dates else value
            self._dates[value] = form
            return form

    def add(self, row: Row) -> None:
        number, item, start, end, content, flag = row
        key = (number, item)
        index = self._count
        self._count = index + 1
        head = self._heads.get(key)
        version = 1
        if head is not None:
            version = head[1] + 1
            self._supersede(key, head, start)
        self._heads[key] = (index, version, start, end)
        if flag:
            self.summary.flagged.add(key)
        self._plaintexts.append(content)
        self._contexts.append(f"{self._prefix}{number}|{item}|{version}".encode())
        dates = self._dates
        self._numbers.append(number)
        self._items.append(item)
        self._versions.append(version)
        self._starts.append(dates[start] if start in dates else self._date(start))
        self._ends.append(dates[end] if end in dates else self._date(end))

    def _supersede(
        self, key: tuple[str, str], head: tuple[int, int, date, date | None], new: date
    ) -> None:
        ident, version, start, end = head
        replaced = False
        closed = end
        if new <= start:
            replaced = True  # the new value covers the old one's whole period
            self.summary.superseded += 1
        elif end is None or end >= new:
            closed = new - _DAY
            self.summary.superseded += 1
        if ident < 0:
            self.summary.db_changes.append((-1 - ident, closed, replaced))
            return
        replaced_at = self._form.replaced_at if replaced else None
        position = ident - self._chunk_start
        if position >= 0:
            self._changed[position] = (self._date(closed), replaced_at)
        else:
            self.summary.fixups.append((self._date(closed), replaced_at, key[0], key[1], version))

    def take(self) -> Chunk:
        """The pending chunk, sealed (contents now tokens), by column in driver form."""
        tokens = self._key.encrypt_many(self._plaintexts, self._contexts)
        chunk = Chunk(
            self._numbers,
            self._items,
            self._versions,
            self._starts,
            self._ends,
            tokens,
            self._changed,
        )
        self.summary.data_items.update(self._items)
        self._numbers, self._items, self._versions, self._starts, self._ends = [], [], [], [], []
        self._plaintexts, self._contexts, self._changed = [], [], {}
        self._chunk_start = self._count
        return chunk

    def finish(self) -> Summary:
        self.summary.imported = self._count
        return self.summary


class _Errors:
    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def add(self, errors: Iterable[LineError | str]) -> None:
        for error in errors:
            self.summary.error_count += 1
            if len(self.summary.errors) < MAX_ERRORS:
                self.summary.errors.append(str(error))
                # A file-wide error (no line) sorts after every line's.
                line = error.line if not isinstance(error, str) else sys.maxsize
                self.summary.error_lines.append(line)


def produce(
    found: Iterable[tuple[int, Row | list[LineError]]],
    path: str,
    receive_setup: Callable[[bool], Setup | None],
    load_key: Callable[[Setup], DataKey],
    *,
    max_rows: int = MAX_IMPORT_RECORDS,
) -> Iterator[Message]:
    """The messages of an import of ``found`` (see the module); ``receive_setup(block)`` gives
    the setup, or None while it has not come and ``block`` is false."""
    errors = _Errors(Summary())
    backlog: list[Row] = []
    setup: Setup | None = None
    sealer: Sealer | None = None
    add: Callable[[Row], None] | None = None  # the sealer's, once sealing
    chunk_rows = pending = count = 0
    failed = False
    for _number, item in found:
        if type(item) is list:
            errors.add(item)
            if not failed:
                yield "failed", None  # the storing side may stop inserting now
            failed = True
            backlog.clear()
            continue
        count += 1
        if count > max_rows:
            errors.add([_too_many(path, max_rows)])
            failed = True
            break
        if failed:
            continue  # the import fails anyway: only look for more bad lines
        if add is not None:
            add(item)  # type: ignore[arg-type]
            pending += 1
            if pending >= chunk_rows:
                yield "rows", sealer.take()  # type: ignore[union-attr]
                pending = 0
            continue
        if setup is not None:
            continue  # the import id is done already: only check the file
        backlog.append(item)  # type: ignore[arg-type]
        if len(backlog) % POLL_EVERY == 0:
            setup = receive_setup(len(backlog) >= MAX_BACKLOG)
            if setup is not None and setup.store:
                sealer = Sealer(setup, load_key(setup))
                yield from _drain(sealer, backlog, setup.chunk_rows)
                add, chunk_rows, pending = sealer.add, setup.chunk_rows, sealer.pending
    if setup is None:
        setup = receive_setup(True)
        assert setup is not None
        if setup.store and not failed:
            sealer = Sealer(setup, load_key(setup))
            yield from _drain(sealer, backlog, setup.chunk_rows)
    summary = errors.summary
    if sealer is not None and not failed:
        if sealer.pending:
            yield "rows", sealer.take()
        summary = sealer.finish()
        summary.errors, summary.error_count = errors.summary.errors, errors.summary.error_count
        summary.error_lines = errors.summary.error_lines
    else:
        summary.imported = count
    yield "end", summary


def merge_summaries(summaries: list[Summary], path: str, max_rows: int) -> Summary:
    """One summary of the workers that each sealed the rows of their own people: the counts
    added up, the changes joined (no two touch the same person), the first errors by line."""
    merged = Summary()
    errors: list[tuple[int, str]] = []
    for summary in summaries:
        merged.imported += summary.imported
        merged.superseded += summary.superseded
        merged.db_changes.extend(summary.db_changes)
        merged.fixups.extend(summary.fixups)
        merged.flagged.update(summary.flagged)
        merged.data_items.update(summary.data_items)
        merged.error_count += summary.error_count
        errors.extend(zip(summary.error_lines, summary.errors, strict=True))
    # A worker past the limit on its own rows said so already (and stopped counting).
    if merged.imported > max_rows and all(s.imported <= max_rows for s in summaries):
        errors.append((sys.maxsize, _too_many(path, max_rows)))
        merged.error_count += 1
    errors.sort(key=lambda error: error[0])
    del errors[MAX_ERRORS:]
    merged.error_lines = [line for line, _ in errors]
    merged.errors = [text for _, text in errors]
    return merged


def _too_many(path: str, max_rows: int) -> str:
    return f"{path}: an import holds at most {max_rows} records"


def _drain(sealer: Sealer, backlog: list[Row], chunk_rows: int) -> Iterator[Message]:
    for row in backlog:
        sealer.add(row)
        if sealer.pending >= chunk_rows:
            yield "rows", sealer.take()
    backlog.clear()


# --- the worker process -----------------------------------------------------------------------


class Worker:
    """A forked producer of ``path``: ``send_setup`` once, then ``messages``; ``close`` always."""

    def __init__(self, pid: int, setup_out: BinaryIO, messages_in: BinaryIO) -> None:
        self.pid = pid
        self._setup_out = setup_out
        self._in = messages_in
        self._reaped = False

    def send_setup(self, setup: Setup) -> None:
        pickle.dump(setup, self._setup_out, protocol=pickle.HIGHEST_PROTOCOL)
        self._setup_out.flush()

    def messages(self) -> Iterator[Message]:
        while True:
            try:
                message: Message = pickle.load(self._in)  # noqa: S301 (our own child's pipe)
            except EOFError:
                raise RuntimeError("the import worker ended without finishing") from None
            yield message
            if message[0] not in ("rows", "failed"):
                return

    def fds(self) -> tuple[int, int]:
        """The parent's ends of this worker's pipes."""
        return self._setup_out.fileno(), self._in.fileno()

    def end(self) -> None:
        """Kill the worker if it still runs (its pipe then ends: a reader blocked on it returns)."""
        if self._reaped:
            return
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                os.kill(self.pid, signal.SIGKILL)  # our own child, by its pid
            else:
                self._reaped = True

    def close(self, *, finished: bool = False) -> None:
        """Reap the worker: wait for it when it ``finished`` its stream, else end it first."""
        for stream in (self._setup_out, self._in):
            with contextlib.suppress(OSError):
                stream.close()
        if not finished:
            self.end()
        if self._reaped:
            return
        self._reaped = True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


class Workers:
    """Several forked producers of one file, each sealing the rows of its own people
    (``duplicates_rows.shard_of``), seen as one: the same setup to each, their chunks as they
    come, one merged summary at the end; a crash of any is the stream's crash."""

    def __init__(self, workers: list[Worker], path: str) -> None:
        self._workers = workers
        self._path = path
        self._stop = threading.Event()
        self._pumps: list[threading.Thread] = []

    def send_setup(self, setup: Setup) -> None:
        count = len(self._workers)
        for shard, worker in enumerate(self._workers):
            # Each worker gets the stored versions of its own people only.
            latest = [row for row in setup.latest if shard_of(row[0], count) == shard]
            worker.send_setup(replace(setup, latest=latest))

    def messages(self) -> Iterator[Message]:
        # One thread per pipe: each blocks reading its worker (the GIL is free meanwhile), so
        # a slow worker never holds up the other's chunks.
        inbox: queue.Queue[Message] = queue.Queue(maxsize=4 * len(self._workers))
        self._pumps = [
            threading.Thread(target=self._pump, args=(worker, inbox), daemon=True)
            for worker in self._workers
        ]
        for pump in self._pumps:
            pump.start()
        summaries: list[Summary] = []
        # Rows stop reaching the storing side once any worker found a bad line or all of them
        # together passed the import's limit: the import fails, so they would only be rolled
        # back (each worker sees only its own rows and lines).
        forwarding, rows = True, 0
        while len(summaries) < len(self._workers):
            kind, payload = inbox.get()
            if kind == "end":
                summaries.append(payload)
            elif kind == "failed":
                forwarding = False
            elif kind == "rows":
                rows += len(payload)
                forwarding = forwarding and rows <= MAX_IMPORT_RECORDS
                if forwarding:
                    yield kind, payload
            else:
                yield kind, payload
                return
        yield "end", merge_summaries(summaries, self._path, MAX_IMPORT_RECORDS)

    def _pump(self, worker: Worker, inbox: queue.Queue[Message]) -> None:
        reason = "the import worker ended without finishing"
        try:
            for message in worker.messages():
                self._put(inbox, message)
                if message[0] not in ("rows", "failed"):
                    return  # its end, or its own crash
        except RuntimeError:
            pass  # its pipe ended early: it died, or was killed
        except Exception as error:  # any other failure to read it is the stream's crash too
            reason = f"{reason} ({type(error).__name__})"
        self._put(inbox, ("crash", reason))

    def _put(self, inbox: queue.Queue[Message], message: Message) -> None:
        """Hand ``message`` over, waiting for room until the storing side stops reading."""
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                inbox.put(message, timeout=PUMP_WAIT)
                return

    def close(self, *, finished: bool = False) -> None:
        self._stop.set()
        if not finished:
            # First end the workers: a pump blocked reading a live worker holds its pipe's
            # lock, and closing the pipe would wait for it.
            for worker in self._workers:
                worker.end()
        for pump in self._pumps:
            pump.join()
        for worker in self._workers:
            worker.close(finished=finished)


def fork_available() -> bool:
    return hasattr(os, "fork")


def start_workers(path: str, count: int) -> Worker | Workers:
    """``count`` forked producers of the file at ``path``, as one source (see ``Workers``)."""
    if count <= 1:
        return start_worker(path)
    workers: list[Worker] = []
    try:
        for shard in range(count):
            # Each child closes its elder siblings' pipe ends it inherited, so a worker's
            # pipes end when the parent's do (no sibling keeps them open).
            inherited = [fd for worker in workers for fd in worker.fds()]
            workers.append(start_worker(path, shard=shard, shards=count, inherited=inherited))
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return Workers(workers, path)


def start_worker(
    path: str, *, shard: int = 0, shards: int = 1, inherited: Sequence[int] = ()
) -> Worker:
    """Fork a producer of the file at ``path`` (of the people of ``shard`` of ``shards``).
    Call it before loading heavy modules (this module loads none): the child loads its own
    (protobuf, cryptography) while the parent loads the storing side's (SQLAlchemy), each on
    its own core."""
    setup_read, setup_write = os.pipe()
    message_read, message_write = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            for fd in (setup_write, message_read, *inherited):
                os.close(fd)
            _child(path, setup_read, message_write, shard, shards)
            code = 0
        finally:
            os._exit(code)
    os.close(setup_read)
    os.close(message_write)
    return Worker(pid, os.fdopen(setup_write, "wb"), os.fdopen(message_read, "rb"))


def _child(path: str, setup_fd: int, message_fd: int, shard: int, shards: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if need be
    # Short-lived and free of cycles: the cyclic collector would only rescan the rows read
    # ahead, again and again (a third of the reading time).
    gc.disable()
    setup_in = os.fdopen(setup_fd, "rb")
    out = os.fdopen(message_fd, "wb")

    def receive(block: bool) -> Setup | None:
        if not block and not select.select([setup_fd], [], [], 0)[0]:
            return None
        setup: Setup = pickle.load(setup_in)  # noqa: S301 (our own parent's pipe)
        return setup

    def load_key(setup: Setup) -> DataKey:
        from linkage.atrest import DataKey

        return DataKey.load_or_create(Path(setup.key_path))

    try:
        from server.duplicates_rows import read_rows

        with open(path, encoding="utf-8") as handle:
            found = read_rows(handle, path, shard=shard, shards=shards)
            for message in produce(found, path, receive, load_key):
                pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
    except (BrokenPipeError, EOFError):
        return  # the parent gave up
    except UnicodeDecodeError as error:
        _send_crash(out, f"{path}: not UTF-8 text (byte {error.start})")
    except OSError as error:
        _send_crash(out, f"{path}: {error.strerror or type(error).__name__}")
    except Exception as error:
        _send_crash(out, f"import worker failed: {type(error).__name__}")


def _send_crash(out: BinaryIO, reason: str) -> None:
    with contextlib.suppress(OSError):
        pickle.dump(("crash", reason), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
