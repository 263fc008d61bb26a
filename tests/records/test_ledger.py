"""Appending in the caller's transaction: numbering, atomicity, checkpoints, many ledgers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.ledger import Ledger, read_head
from linkage.records.model import GENESIS_HASH, chain_hash, entry_bytes
from linkage.records.verify import verify

from .conftest import LEDGER, Chain, Clock, make_record, query


def test_appended_records_are_numbered_from_one_without_gaps(
    sessions: sessionmaker[Session], ledger: Ledger
) -> None:
    with unit_of_work(sessions) as session:
        first = ledger.append_many(session, LEDGER, [make_record(i) for i in range(3)])
    with unit_of_work(sessions) as session:
        second = ledger.append_many(session, LEDGER, [make_record(i) for i in range(3, 5)])
    assert (first, second) == ([1, 2, 3], [4, 5])


def test_each_hash_covers_the_previous_hash_and_the_entry_bytes(chain: Chain) -> None:
    rows = query(chain.engine, "SELECT seq, prev_hash, hash FROM access_records ORDER BY seq")
    prev = GENESIS_HASH
    for (seq, stored_prev, stored), record in zip(rows, chain.records, strict=True):
        assert stored_prev == prev
        assert stored == chain_hash(prev, entry_bytes(seq, record))
        prev = stored


def test_a_rolled_back_business_transaction_leaves_no_record_and_no_gap(
    sessions: sessionmaker[Session], ledger: Ledger
) -> None:
    with unit_of_work(sessions) as session:
        ledger.append(session, make_record(1))

    def record_then_fail() -> None:
        with unit_of_work(sessions) as session:
            ledger.append(session, make_record(2))
            raise RuntimeError("business change failed")

    with pytest.raises(RuntimeError, match="business change failed"):
        record_then_fail()
    with unit_of_work(sessions) as session:
        assert ledger.append(session, make_record(3)) == 2
        head = read_head(session, LEDGER)
    assert head is not None
    assert head.last_seq == 2


def test_a_checkpoint_is_signed_every_n_records(chain: Chain) -> None:
    seqs = query(chain.engine, "SELECT seq FROM access_record_checkpoints ORDER BY seq")
    assert seqs == [(10,), (20,), (30,), (40,), (50,)]


def test_a_checkpoint_is_signed_once_the_interval_has_passed(
    sessions: sessionmaker[Session], ledger: Ledger, clock: Clock
) -> None:
    with unit_of_work(sessions) as session:
        ledger.append(session, make_record(1))
        assert ledger.checkpoint(session, LEDGER) is None  # interval not over yet
    clock.advance(ledger.checkpoint_interval)
    with unit_of_work(sessions) as session:
        ledger.append(session, make_record(2))
        assert ledger.checkpoint(session, LEDGER) is None  # the append already signed it
    with sessions() as session:
        head = read_head(session, LEDGER)
    assert head is not None
    assert head.checkpoint_seq == 2


def test_forced_checkpoint_signs_the_unsigned_tail_only_once(
    sessions: sessionmaker[Session], ledger: Ledger
) -> None:
    with unit_of_work(sessions) as session:
        ledger.append(session, make_record(1))
        assert ledger.checkpoint(session, LEDGER, force=True) == 1
        assert ledger.checkpoint(session, LEDGER, force=True) is None


def test_ledgers_in_one_database_are_separate_chains(
    sessions: sessionmaker[Session], ledger: Ledger
) -> None:
    with unit_of_work(sessions) as session:
        ledger.append_many(session, "server:sakai", [make_record(i) for i in range(3)])
        ledger.append_many(
            session, "server:osaka", [make_record(i, ledger="server:osaka") for i in range(2)]
        )
    with sessions() as session:
        reports = [
            verify(session, lid, ledger.verify_keys()) for lid in ("server:sakai", "server:osaka")
        ]
    assert [(r.ok, r.last_seq) for r in reports] == [(True, 3), (True, 2)]


def test_a_record_for_another_ledger_is_refused(
    sessions: sessionmaker[Session], ledger: Ledger
) -> None:
    with pytest.raises(ValueError, match="server:osaka"), unit_of_work(sessions) as session:
        ledger.append_many(session, LEDGER, [make_record(1, ledger="server:osaka")])


@pytest.mark.parametrize("key_id", ["", "x" * 65, "tab\tinside"])
def test_a_key_id_that_cannot_be_stored_or_signed_is_refused(
    signing_key: SigningKey, key_id: str
) -> None:
    with pytest.raises(ValueError, match="key_id"):
        Ledger(signing_key, key_id)


def test_checkpoint_settings_must_be_positive(signing_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        Ledger(signing_key, "k", checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint_interval"):
        Ledger(signing_key, "k", checkpoint_interval=timedelta(0))
