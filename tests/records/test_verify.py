"""Tamper detection: plain-SQL edits, deletions, insertions and reorders of the database file
are each caught at the right position; forged signatures too; an untouched chain verifies."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from nacl.signing import SigningKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import session_factory, unit_of_work
from linkage.records import spans as spans_module
from linkage.records import verify as verify_module
from linkage.records.ledger import Ledger
from linkage.records.model import chain_hash, checkpoint_message, entry_bytes
from linkage.records.models import RECORDS, entry_bytes_sql
from linkage.records.spans import Span, link_span, link_span_in_worker
from linkage.records.verify import ProblemKind, VerifyReport, ledger_ids, verify, verify_many

from .conftest import LEDGER, Chain, make_record, query, tamper

_COLUMNS = (
    "ledger, seq, occurred_at_us, event, actor_kind, actor_id, procedure, requester, "
    "provider, data_items, subject, permit_id, query_id, outcome, reason, prev_hash, hash"
)


def check(chain: Chain) -> VerifyReport:
    return verify(chain.engine, LEDGER, chain.keys)


def assert_problem(report: VerifyReport, seq: int, kind: ProblemKind) -> None:
    assert report.problem is not None, report.describe()
    assert (report.problem.seq, report.problem.kind) == (seq, kind), report.describe()


def head(chain: Chain) -> tuple[int, bytes]:
    ((seq, hash_),) = query(chain.engine, "SELECT last_seq, last_hash FROM access_record_heads")
    return seq, hash_


def test_an_untouched_chain_verifies_with_every_checkpoint(chain: Chain) -> None:
    report = check(chain)
    assert report.ok, report.describe()
    assert (report.records_checked, report.last_seq, report.checkpoints_checked) == (50, 50, 5)
    assert report.unsigned_tail == 0
    assert report.signatures_checked
    assert report.describe() == (
        "ledger server:sakai: intact: 50 records checked through 50, 5 checkpoints, 0 unsigned"
    )


def test_an_unknown_ledger_is_an_empty_intact_chain(chain: Chain) -> None:
    report = verify(chain.engine, "server:nowhere", chain.keys)
    assert report.ok
    assert report.records_checked == 0


# -- edits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("occurred_at_us", 1),
        ("event", "NO_DATA"),
        ("actor_kind", "STAFF"),
        ("actor_id", "staff-007"),
        ("procedure", "other"),
        ("requester", "org.elsewhere"),
        ("provider", "org.elsewhere"),
        ("data_items", "local_tax.income"),
        ("subject", "U27140999999999"),
        ("permit_id", "permit-x"),
        ("query_id", "query-x"),
        ("outcome", "DENIED"),
        ("reason", "SOMETHING"),
        ("hash", b"\x00" * 32),
    ],
)
def test_an_edit_of_any_field_is_caught_at_that_record(
    chain: Chain, column: str, value: object
) -> None:
    tamper(chain.engine, f"UPDATE access_records SET {column} = ? WHERE seq = 17", value)  # noqa: S608
    assert_problem(check(chain), 17, ProblemKind.EDITED)
    assert "record 17: EDITED" in check(chain).describe()


def test_an_edited_prev_hash_column_is_caught(chain: Chain) -> None:
    tamper(chain.engine, "UPDATE access_records SET prev_hash = ? WHERE seq = 17", b"\x01" * 32)
    report = check(chain)
    assert_problem(report, 17, ProblemKind.EDITED)


def test_moving_a_record_to_another_ledger_shows_as_a_deletion(chain: Chain) -> None:
    tamper(chain.engine, "UPDATE access_records SET ledger = 'server:osaka' WHERE seq = 17")
    assert_problem(check(chain), 17, ProblemKind.DELETED)


def test_an_edit_with_recomputed_hashes_after_it_is_caught_by_the_next_checkpoint(
    chain: Chain,
) -> None:
    # The insider knows the algorithm: edit record 17 and recompute every later hash and head.
    tamper(chain.engine, "UPDATE access_records SET outcome = 'DENIED' WHERE seq = 17")
    _rehash_from(chain, 17)
    report = check(chain)
    assert_problem(report, 20, ProblemKind.EDITED)
    assert "records 11..20 were rewritten" in report.describe()


def test_an_edit_with_only_its_own_hash_recomputed_is_caught_at_that_record(chain: Chain) -> None:
    tamper(chain.engine, "UPDATE access_records SET outcome = 'DENIED' WHERE seq = 17")
    _rehash_from(chain, 17, through=17)
    assert_problem(check(chain), 17, ProblemKind.EDITED)


# -- deletions ----------------------------------------------------------------------------------


def test_a_deleted_record_is_caught_at_its_position(chain: Chain) -> None:
    tamper(chain.engine, "DELETE FROM access_records WHERE seq = 23")
    report = check(chain)
    assert_problem(report, 23, ProblemKind.DELETED)
    assert report.describe() == "ledger server:sakai: record 23: DELETED: record 23 missing"


def test_a_deletion_hidden_by_renumbering_is_caught(chain: Chain) -> None:
    tamper(chain.engine, "DELETE FROM access_records WHERE seq BETWEEN 23 AND 24")
    # Close the gap: move every later record down by two (via negatives: seq is unique).
    tamper(chain.engine, "UPDATE access_records SET seq = -(seq - 2) WHERE seq > 24")
    tamper(chain.engine, "UPDATE access_records SET seq = -seq WHERE seq < 0")
    report = check(chain)
    assert_problem(report, 23, ProblemKind.DELETED)
    assert "2 records were deleted before it" in report.describe()


def test_deleting_the_last_records_is_caught_by_the_head(chain: Chain) -> None:
    tamper(chain.engine, "DELETE FROM access_records WHERE seq >= 49")
    report = check(chain)
    assert_problem(report, 49, ProblemKind.DELETED)


def test_a_truncation_that_also_rewrites_the_head_is_caught_by_the_checkpoint(
    chain: Chain,
) -> None:
    rows = query(chain.engine, "SELECT hash FROM access_records WHERE seq = 45")
    tamper(chain.engine, "DELETE FROM access_records WHERE seq > 45")
    tamper(chain.engine, "UPDATE access_record_heads SET last_seq = 45, last_hash = ?", rows[0][0])
    report = check(chain)
    assert_problem(report, 46, ProblemKind.DELETED)
    assert "checkpoint vouches for records through 50" in report.describe()


def test_truncating_only_the_unsigned_tail_with_the_head_is_the_documented_limit(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    # FORMAT.md §6: records after the last checkpoint are protected by the chain and the head
    # only. Pin that boundary: the truncation below is undetectable (one record more is
    # caught by the checkpoint at 50, see the test above).
    with unit_of_work(sessions) as session:
        chain.ledger.append_many(session, LEDGER, [make_record(i) for i in range(51, 54)])
    assert check(chain).unsigned_tail == 3
    rows = query(chain.engine, "SELECT hash FROM access_records WHERE seq = 50")
    tamper(chain.engine, "DELETE FROM access_records WHERE seq > 50")
    tamper(chain.engine, "UPDATE access_record_heads SET last_seq = 50, last_hash = ?", rows[0][0])
    assert check(chain).ok


# -- insertions -----------------------------------------------------------------------------


def test_a_record_inserted_after_the_head_is_caught(chain: Chain) -> None:
    tamper(
        chain.engine,
        f"INSERT INTO access_records ({_COLUMNS}) "  # noqa: S608
        f"SELECT ledger, 51, occurred_at_us, event, actor_kind, actor_id, procedure, requester, "
        f"provider, data_items, 'U27140999999999', permit_id, query_id, outcome, reason, hash, "
        f"hash FROM access_records WHERE seq = 50",
    )
    assert_problem(check(chain), 51, ProblemKind.INSERTED)


def test_a_correctly_chained_record_after_the_head_is_still_caught_by_the_head(
    chain: Chain,
) -> None:
    _insert_forged(chain, 51)
    assert_problem(check(chain), 51, ProblemKind.INSERTED)


def test_a_record_inserted_in_the_middle_is_caught_at_its_position(chain: Chain) -> None:
    _shift_up_from(chain, 30)
    tamper(
        chain.engine,
        f"INSERT INTO access_records ({_COLUMNS}) "  # noqa: S608
        f"SELECT ledger, 30, occurred_at_us, event, actor_kind, actor_id, procedure, requester, "
        f"provider, data_items, 'U27140999999999', permit_id, query_id, outcome, reason, "
        f"prev_hash, hash FROM access_records WHERE seq = 31",
    )
    report = check(chain)
    assert_problem(report, 30, ProblemKind.INSERTED)


def test_a_correctly_chained_record_inserted_in_the_middle_is_caught(chain: Chain) -> None:
    _shift_up_from(chain, 30)
    _insert_forged(chain, 30)
    assert_problem(check(chain), 30, ProblemKind.INSERTED)


# -- reorders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [(12, 13), (12, 38)])
def test_swapping_two_records_is_caught_at_the_first(chain: Chain, first: int, second: int) -> None:
    tamper(chain.engine, "UPDATE access_records SET seq = -1 WHERE seq = ?", first)
    tamper(chain.engine, "UPDATE access_records SET seq = ? WHERE seq = ?", first, second)
    tamper(chain.engine, "UPDATE access_records SET seq = ? WHERE seq = -1", second)
    assert_problem(check(chain), first, ProblemKind.REORDERED)


# -- checkpoints and the head -----------------------------------------------------------------


def test_a_forged_checkpoint_signature_is_caught(chain: Chain) -> None:
    tamper(
        chain.engine,
        "UPDATE access_record_checkpoints SET signature = ? WHERE seq = 30",
        b"\x00" * 64,
    )
    assert_problem(check(chain), 30, ProblemKind.BAD_CHECKPOINT)


def test_a_checkpoint_signed_with_another_key_is_caught(chain: Chain) -> None:
    ((message_hash, at_us),) = query(
        chain.engine, "SELECT hash, signed_at_us FROM access_record_checkpoints WHERE seq = 30"
    )

    forged = (
        SigningKey.generate()
        .sign(checkpoint_message(LEDGER, 30, message_hash, at_us, "sakai-records-2026"))
        .signature
    )
    tamper(
        chain.engine, "UPDATE access_record_checkpoints SET signature = ? WHERE seq = 30", forged
    )
    report = check(chain)
    assert_problem(report, 30, ProblemKind.BAD_CHECKPOINT)
    assert "signature does not verify" in report.describe()


def test_a_checkpoint_moved_to_another_hash_is_caught(chain: Chain) -> None:
    tamper(
        chain.engine, "UPDATE access_record_checkpoints SET hash = ? WHERE seq = 30", b"\x02" * 32
    )
    assert_problem(check(chain), 30, ProblemKind.BAD_CHECKPOINT)


def test_without_keys_signatures_are_skipped_and_the_report_says_so(chain: Chain) -> None:
    tamper(
        chain.engine,
        "UPDATE access_record_checkpoints SET signature = ? WHERE seq = 30",
        b"\x00" * 64,
    )
    report = verify(chain.engine, LEDGER, None)
    assert report.ok
    assert not report.signatures_checked
    assert "signatures NOT checked" in report.describe()


def test_an_unknown_key_id_is_a_bad_checkpoint(chain: Chain) -> None:
    report = verify(chain.engine, LEDGER, {"another-key": SigningKey.generate().verify_key})
    assert_problem(report, 10, ProblemKind.BAD_CHECKPOINT)
    assert "unknown key" in report.describe()


def test_an_edited_head_is_caught(chain: Chain) -> None:
    tamper(chain.engine, "UPDATE access_record_heads SET last_hash = ?", b"\x03" * 32)
    assert_problem(check(chain), 50, ProblemKind.HEAD_MISMATCH)


def test_a_deleted_head_is_caught(chain: Chain) -> None:
    tamper(chain.engine, "DELETE FROM access_record_heads")
    assert_problem(check(chain), 50, ProblemKind.HEAD_MISMATCH)


def test_verification_streams_in_chunks_and_reaches_the_same_verdict(chain: Chain) -> None:
    tamper(chain.engine, "UPDATE access_records SET subject = 'X' WHERE seq = 44")
    report = verify(chain.engine, LEDGER, chain.keys, chunk_size=7)
    assert_problem(report, 44, ProblemKind.EDITED)


# -- helpers: what a knowledgeable insider would do --------------------------------------------


def _rehash_from(chain: Chain, start: int, through: int | None = None) -> None:
    """Recompute hashes (and the head) from ``start`` as the algorithm says, like an insider."""

    with chain.engine.connect() as conn:
        rows = conn.execute(
            select(RECORDS.c.seq, entry_bytes_sql(conn.dialect.name))
            .where(RECORDS.c.ledger == LEDGER, RECORDS.c.seq >= start - 1)
            .order_by(RECORDS.c.seq)
        ).all()
    ((prev,),) = query(chain.engine, "SELECT hash FROM access_records WHERE seq = ?", start - 1)
    for seq, body in rows[1:]:
        if through is not None and seq > through:
            break
        digest = chain_hash(prev, body)
        tamper(
            chain.engine,
            "UPDATE access_records SET prev_hash = ?, hash = ? WHERE seq = ?",
            prev,
            digest,
            seq,
        )
        prev = digest
    if through is None:
        tamper(chain.engine, "UPDATE access_record_heads SET last_hash = ?", prev)


def _shift_up_from(chain: Chain, start: int) -> None:
    """Make room at ``start`` by renumbering every later record one up (and the head)."""
    tamper(chain.engine, "UPDATE access_records SET seq = -(seq + 1) WHERE seq >= ?", start)
    tamper(chain.engine, "UPDATE access_records SET seq = -seq WHERE seq < 0")
    tamper(chain.engine, "UPDATE access_record_heads SET last_seq = last_seq + 1")


def _insert_forged(chain: Chain, seq: int) -> None:
    """Insert a record at ``seq`` whose hashes are computed correctly onto record ``seq - 1``."""

    ((prev,),) = query(chain.engine, "SELECT hash FROM access_records WHERE seq = ?", seq - 1)
    forged = make_record(999, subject="U27140999999999")
    digest = chain_hash(prev, entry_bytes(seq, forged))
    tamper(
        chain.engine,
        f"INSERT INTO access_records ({_COLUMNS}) VALUES "  # noqa: S608
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        LEDGER,
        seq,
        forged.occurred_at_us,
        forged.event.value,
        forged.actor_kind.value,
        forged.actor_id,
        forged.procedure,
        forged.requester,
        forged.provider,
        ",".join(forged.data_items),
        forged.subject,
        forged.permit_id,
        forged.query_id,
        forged.outcome.value,
        forged.reason,
        prev,
        digest,
    )


# -- fast and parallel routes give the walker's verdict -----------------------------------------


@pytest.fixture
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel tasks of 7 records, so the 50-record chain has task boundaries everywhere."""
    monkeypatch.setattr(verify_module, "_SPAN_RECORDS", 7)


def _same(a: VerifyReport, b: VerifyReport) -> None:
    assert a == b, (a.describe(), b.describe())


@pytest.mark.usefixtures("small_tasks")
def test_worker_processes_reach_the_same_verdict_on_an_intact_chain(chain: Chain) -> None:
    parallel = verify(chain.engine, LEDGER, chain.keys, workers=2, chunk_size=5)
    _same(parallel, verify(chain.engine, LEDGER, chain.keys, workers=1))
    assert parallel.ok
    assert (parallel.records_checked, parallel.checkpoints_checked) == (50, 5)


def test_an_intact_chain_is_verified_without_the_walker(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast route must hold on an intact chain (else every verify silently walks)."""

    def no_walk(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the fast route failed on an intact chain")

    monkeypatch.setattr(verify_module._Walk, "run", no_walk)
    for workers in (None, 1):
        report = verify(chain.engine, LEDGER, chain.keys, workers=workers, chunk_size=7)
        assert report.ok, report.describe()
        assert (report.records_checked, report.checkpoints_checked) == (50, 5)


def _split_a_hash(chain: Chain) -> tuple[str, tuple[object, ...]]:
    """Move the last byte of record 20's hash to the front of record 21's: the hashes,
    concatenated, read the same; each on its own is wrong."""
    ((h20,), (h21,)) = query(
        chain.engine, "SELECT hash FROM access_records WHERE seq IN (20, 21) ORDER BY seq"
    )
    tamper(chain.engine, "UPDATE access_records SET hash = ? WHERE seq = 20", bytes(h20)[:31])
    return "UPDATE access_records SET hash = ? WHERE seq = 21", (bytes(h20)[31:] + bytes(h21),)


_TAMPERING = {
    "edit": ("UPDATE access_records SET subject = 'X' WHERE seq = 22", 22, ProblemKind.EDITED),
    "edit a time": (
        "UPDATE access_records SET occurred_at_us = occurred_at_us + 1 WHERE seq = 9",
        9,
        ProblemKind.EDITED,
    ),
    "delete the first": ("DELETE FROM access_records WHERE seq = 1", 1, ProblemKind.DELETED),
    "hash split between records": ("", 20, ProblemKind.EDITED),
    "edit at a task edge": (
        "UPDATE access_records SET subject = 'X' WHERE seq = 15",
        15,
        ProblemKind.EDITED,
    ),
    "delete": ("DELETE FROM access_records WHERE seq = 29", 29, ProblemKind.DELETED),
    "delete the tail": ("DELETE FROM access_records WHERE seq > 48", 49, ProblemKind.DELETED),
    "prev_hash": (
        "UPDATE access_records SET prev_hash = hash WHERE seq = 36",
        36,
        ProblemKind.EDITED,
    ),
    "checkpoint": (
        "UPDATE access_record_checkpoints SET signed_at_us = 1 WHERE seq = 40",
        40,
        ProblemKind.BAD_CHECKPOINT,
    ),
    "head": ("UPDATE access_record_heads SET last_hash = prev_hash", 50, None),
}


@pytest.mark.usefixtures("small_tasks")
@pytest.mark.parametrize("case", sorted(_TAMPERING))
def test_every_route_names_the_same_first_bad_record(chain: Chain, case: str) -> None:
    sql, seq, kind = _TAMPERING[case]
    params: tuple[object, ...] = ()
    if case == "head":
        ((prev,),) = query(chain.engine, "SELECT prev_hash FROM access_records WHERE seq = 50")
        sql, params = "UPDATE access_record_heads SET last_hash = ?", (prev,)
        kind = ProblemKind.HEAD_MISMATCH
    if case == "hash split between records":
        sql, params = _split_a_hash(chain)
    tamper(chain.engine, sql, *params)
    assert kind is not None
    in_process = verify(chain.engine, LEDGER, chain.keys, workers=1, chunk_size=5)
    assert_problem(in_process, seq, kind)
    _same(verify(chain.engine, LEDGER, chain.keys, workers=2, chunk_size=5), in_process)


def test_a_session_is_verified_in_its_own_transaction_whatever_the_workers(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        chain.ledger.append(session, make_record(51))  # not committed: only this session sees it
        report = verify(session, LEDGER, chain.keys, workers=2)
        session.rollback()
    assert report.ok, report.describe()
    assert report.last_seq == 51


def test_a_private_in_memory_database_is_verified_in_this_process(
    ledger: Ledger, signing_key: SigningKey
) -> None:
    from linkage.db import Base, make_engine
    from linkage.records.models import TABLES

    engine = make_engine("sqlite://")
    try:
        Base.metadata.create_all(engine, tables=list(TABLES))
        with unit_of_work(session_factory(engine)) as session:
            ledger.append_many(session, LEDGER, [make_record(i) for i in range(5)])
        assert verify(engine, LEDGER, ledger.verify_keys(), workers=2).ok
    finally:
        engine.dispose()


def test_workers_must_be_positive(chain: Chain) -> None:
    with pytest.raises(ValueError, match="workers"):
        verify(chain.engine, LEDGER, chain.keys, workers=0)


def test_verify_many_reports_each_ledger_in_turn(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        chain.ledger.append(session, make_record(1, ledger="server:osaka"))
    reports = list(verify_many(chain.engine, ["server:osaka", LEDGER], chain.keys, workers=1))
    assert [(r.ledger, r.ok, r.last_seq) for r in reports] == [
        ("server:osaka", True, 1),
        (LEDGER, True, 50),
    ]


def test_ledger_ids_come_from_heads_and_records_alike(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        chain.ledger.append(session, make_record(1, ledger="network"))
        chain.ledger.append(session, make_record(1, ledger="ua:sakai"))
    tamper(chain.engine, "DELETE FROM access_record_heads WHERE ledger = 'network'")
    assert ledger_ids(chain.engine) == ["network", LEDGER, "ua:sakai"]
    with sessions() as session:
        assert ledger_ids(session) == ["network", LEDGER, "ua:sakai"]


def test_link_span_notes_checkpoint_hashes_and_refuses_gaps(chain: Chain) -> None:
    with chain.engine.connect() as conn:
        query_ = verify_module._span_query(conn.dialect)
        raw = conn.connection.driver_connection
        span = link_span(raw, query_, LEDGER, 10, 30, [20, 30], window=4)
        assert span is not None
        assert (span.first, span.last) == (11, 30)
        assert span.first_prev == chain_hash_at(chain, 10)
        assert span.marks == {20: chain_hash_at(chain, 20), 30: chain_hash_at(chain, 30)}
        assert link_span(raw, query_, LEDGER, 10, 30, prev=b"\x00" * 32) is None
        assert link_span(raw, query_, LEDGER, 45, 55) is None  # the chain ends at 50


def test_stitching_needs_each_span_to_link_onto_the_last() -> None:
    a = Span(1, 2, b"g", b"h2", {2: b"h2"})
    b = Span(3, 4, b"h2", b"h4", {})
    assert verify_module._stitch([a, b], b"g") == Span(1, 4, b"g", b"h4", {2: b"h2"})
    assert verify_module._stitch([a, b], b"other") is None
    assert verify_module._stitch([b, a], b"h2") is None
    assert verify_module._stitch([a, None], b"g") is None


def chain_hash_at(chain: Chain, seq: int) -> bytes:
    ((hash_,),) = query(chain.engine, "SELECT hash FROM access_records WHERE seq = ?", seq)
    return bytes(hash_)


def test_a_worker_opens_its_own_read_only_connection(chain: Chain) -> None:
    worker_query = verify_module._worker_query(chain.engine)
    assert worker_query is not None
    span = link_span_in_worker(worker_query, LEDGER, 0, 50, [50], 16)
    assert span is not None
    assert (span.first_prev, span.last_hash) == (bytes(32), chain_hash_at(chain, 50))
    connection = spans_module._connect(worker_query)
    try:
        with pytest.raises(Exception, match=r"(?i)read.?only"):
            connection.execute("DELETE FROM access_record_heads")
    finally:
        connection.close()


def test_spans_checked_in_a_spawned_process_come_back_intact(chain: Chain) -> None:
    worker_query = verify_module._worker_query(chain.engine)
    assert worker_query is not None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = [
            pool.submit(link_span_in_worker, worker_query, LEDGER, lo, lo + 25, [20, 40], 10)
            for lo in (0, 25)
        ]
        spans = [future.result() for future in futures]
    stitched = verify_module._stitch(spans, bytes(32))
    assert stitched is not None
    assert stitched.marks == {20: chain_hash_at(chain, 20), 40: chain_hash_at(chain, 40)}
    assert stitched.last_hash == chain_hash_at(chain, 50)
