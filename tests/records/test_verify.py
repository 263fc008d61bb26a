"""Tamper detection: plain-SQL edits, deletions, insertions and reorders of the database file
are each caught at the right position; forged signatures too; an untouched chain verifies."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.model import chain_hash, checkpoint_message, entry_bytes
from linkage.records.models import RECORDS, entry_bytes_sql
from linkage.records.verify import ProblemKind, VerifyReport, verify

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
    ((seq, hash_),) = query(chain.path, "SELECT last_seq, last_hash FROM access_record_heads")
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
    tamper(chain.path, f"UPDATE access_records SET {column} = ? WHERE seq = 17", value)  # noqa: S608
    assert_problem(check(chain), 17, ProblemKind.EDITED)
    assert "record 17: EDITED" in check(chain).describe()


def test_an_edited_prev_hash_column_is_caught(chain: Chain) -> None:
    tamper(chain.path, "UPDATE access_records SET prev_hash = ? WHERE seq = 17", b"\x01" * 32)
    report = check(chain)
    assert_problem(report, 17, ProblemKind.EDITED)


def test_moving_a_record_to_another_ledger_shows_as_a_deletion(chain: Chain) -> None:
    tamper(chain.path, "UPDATE access_records SET ledger = 'server:osaka' WHERE seq = 17")
    assert_problem(check(chain), 17, ProblemKind.DELETED)


def test_an_edit_with_recomputed_hashes_after_it_is_caught_by_the_next_checkpoint(
    chain: Chain,
) -> None:
    # The insider knows the algorithm: edit record 17 and recompute every later hash and head.
    tamper(chain.path, "UPDATE access_records SET outcome = 'DENIED' WHERE seq = 17")
    _rehash_from(chain, 17)
    report = check(chain)
    assert_problem(report, 20, ProblemKind.EDITED)
    assert "records 11..20 were rewritten" in report.describe()


def test_an_edit_with_only_its_own_hash_recomputed_is_caught_at_that_record(chain: Chain) -> None:
    tamper(chain.path, "UPDATE access_records SET outcome = 'DENIED' WHERE seq = 17")
    _rehash_from(chain, 17, through=17)
    assert_problem(check(chain), 17, ProblemKind.EDITED)


# -- deletions ----------------------------------------------------------------------------------


def test_a_deleted_record_is_caught_at_its_position(chain: Chain) -> None:
    tamper(chain.path, "DELETE FROM access_records WHERE seq = 23")
    report = check(chain)
    assert_problem(report, 23, ProblemKind.DELETED)
    assert report.describe() == "ledger server:sakai: record 23: DELETED: record 23 missing"


def test_a_deletion_hidden_by_renumbering_is_caught(chain: Chain) -> None:
    tamper(chain.path, "DELETE FROM access_records WHERE seq BETWEEN 23 AND 24")
    # Close the gap: move every later record down by two (via negatives: seq is unique).
    tamper(chain.path, "UPDATE access_records SET seq = -(seq - 2) WHERE seq > 24")
    tamper(chain.path, "UPDATE access_records SET seq = -seq WHERE seq < 0")
    report = check(chain)
    assert_problem(report, 23, ProblemKind.DELETED)
    assert "2 records were deleted before it" in report.describe()


def test_deleting_the_last_records_is_caught_by_the_head(chain: Chain) -> None:
    tamper(chain.path, "DELETE FROM access_records WHERE seq >= 49")
    report = check(chain)
    assert_problem(report, 49, ProblemKind.DELETED)


def test_a_truncation_that_also_rewrites_the_head_is_caught_by_the_checkpoint(
    chain: Chain,
) -> None:
    rows = query(chain.path, "SELECT hash FROM access_records WHERE seq = 45")
    tamper(chain.path, "DELETE FROM access_records WHERE seq > 45")
    tamper(chain.path, "UPDATE access_record_heads SET last_seq = 45, last_hash = ?", rows[0][0])
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
    rows = query(chain.path, "SELECT hash FROM access_records WHERE seq = 50")
    tamper(chain.path, "DELETE FROM access_records WHERE seq > 50")
    tamper(chain.path, "UPDATE access_record_heads SET last_seq = 50, last_hash = ?", rows[0][0])
    assert check(chain).ok


# -- insertions -----------------------------------------------------------------------------


def test_a_record_inserted_after_the_head_is_caught(chain: Chain) -> None:
    tamper(
        chain.path,
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
        chain.path,
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
    tamper(chain.path, "UPDATE access_records SET seq = -1 WHERE seq = ?", first)
    tamper(chain.path, "UPDATE access_records SET seq = ? WHERE seq = ?", first, second)
    tamper(chain.path, "UPDATE access_records SET seq = ? WHERE seq = -1", second)
    assert_problem(check(chain), first, ProblemKind.REORDERED)


# -- checkpoints and the head -----------------------------------------------------------------


def test_a_forged_checkpoint_signature_is_caught(chain: Chain) -> None:
    tamper(
        chain.path,
        "UPDATE access_record_checkpoints SET signature = ? WHERE seq = 30",
        b"\x00" * 64,
    )
    assert_problem(check(chain), 30, ProblemKind.BAD_CHECKPOINT)


def test_a_checkpoint_signed_with_another_key_is_caught(chain: Chain) -> None:
    ((message_hash, at_us),) = query(
        chain.path, "SELECT hash, signed_at_us FROM access_record_checkpoints WHERE seq = 30"
    )

    forged = (
        SigningKey.generate()
        .sign(checkpoint_message(LEDGER, 30, message_hash, at_us, "sakai-records-2026"))
        .signature
    )
    tamper(chain.path, "UPDATE access_record_checkpoints SET signature = ? WHERE seq = 30", forged)
    report = check(chain)
    assert_problem(report, 30, ProblemKind.BAD_CHECKPOINT)
    assert "signature does not verify" in report.describe()


def test_a_checkpoint_moved_to_another_hash_is_caught(chain: Chain) -> None:
    tamper(chain.path, "UPDATE access_record_checkpoints SET hash = ? WHERE seq = 30", b"\x02" * 32)
    assert_problem(check(chain), 30, ProblemKind.BAD_CHECKPOINT)


def test_without_keys_signatures_are_skipped_and_the_report_says_so(chain: Chain) -> None:
    tamper(
        chain.path,
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
    tamper(chain.path, "UPDATE access_record_heads SET last_hash = ?", b"\x03" * 32)
    assert_problem(check(chain), 50, ProblemKind.HEAD_MISMATCH)


def test_a_deleted_head_is_caught(chain: Chain) -> None:
    tamper(chain.path, "DELETE FROM access_record_heads")
    assert_problem(check(chain), 50, ProblemKind.HEAD_MISMATCH)


def test_verification_streams_in_chunks_and_reaches_the_same_verdict(chain: Chain) -> None:
    tamper(chain.path, "UPDATE access_records SET subject = 'X' WHERE seq = 44")
    report = verify(chain.engine, LEDGER, chain.keys, chunk_size=7)
    assert_problem(report, 44, ProblemKind.EDITED)


# -- helpers: what a knowledgeable insider would do --------------------------------------------


def _rehash_from(chain: Chain, start: int, through: int | None = None) -> None:
    """Recompute hashes (and the head) from ``start`` as the algorithm says, like an insider."""

    with chain.engine.connect() as conn:
        rows = conn.execute(
            select(RECORDS.c.seq, entry_bytes_sql("sqlite"))
            .where(RECORDS.c.ledger == LEDGER, RECORDS.c.seq >= start - 1)
            .order_by(RECORDS.c.seq)
        ).all()
    ((prev,),) = query(chain.path, "SELECT hash FROM access_records WHERE seq = ?", start - 1)
    for seq, body in rows[1:]:
        if through is not None and seq > through:
            break
        digest = chain_hash(prev, body)
        tamper(
            chain.path,
            "UPDATE access_records SET prev_hash = ?, hash = ? WHERE seq = ?",
            prev,
            digest,
            seq,
        )
        prev = digest
    if through is None:
        tamper(chain.path, "UPDATE access_record_heads SET last_hash = ?", prev)


def _shift_up_from(chain: Chain, start: int) -> None:
    """Make room at ``start`` by renumbering every later record one up (and the head)."""
    tamper(chain.path, "UPDATE access_records SET seq = -(seq + 1) WHERE seq >= ?", start)
    tamper(chain.path, "UPDATE access_records SET seq = -seq WHERE seq < 0")
    tamper(chain.path, "UPDATE access_record_heads SET last_seq = last_seq + 1")


def _insert_forged(chain: Chain, seq: int) -> None:
    """Insert a record at ``seq`` whose hashes are computed correctly onto record ``seq - 1``."""

    ((prev,),) = query(chain.path, "SELECT hash FROM access_records WHERE seq = ?", seq - 1)
    forged = make_record(999, subject="U27140999999999")
    digest = chain_hash(prev, entry_bytes(seq, forged))
    tamper(
        chain.path,
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
