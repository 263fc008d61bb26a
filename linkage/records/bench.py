"""Throughput of the ledger on this machine: group-commit appends, verification, and the bare
sha256 chain over the same entry bytes (the floor verification is compared with).

Owns ``measure`` (for ``bench``; returns figures, prints nothing) and ``python -m
linkage.records.bench``. It works only in a scratch database it creates under ``work_dir`` and
must never touch a real ledger or need a real key.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["LedgerBench", "main", "measure"]


@dataclass(frozen=True, slots=True)
class LedgerBench:
    """Records per second of each phase over one scratch ledger."""

    records: int
    append_per_s: float
    verify_per_s: float
    bare_chain_per_s: float

    @property
    def verify_ratio(self) -> float:
        """Verification throughput as a share of the bare sha256 chain."""
        return self.verify_per_s / self.bare_chain_per_s


async def measure(
    work_dir: Path, *, records: int = 100_000, handlers: int = 200, workers: int | None = None
) -> LedgerBench:
    """Append ``records`` through a ``RecordWriter`` (``handlers`` tasks, one await per record,
    like request handlers), verify them (with ``workers`` processes, see ``verify``), and hash
    the same entry bytes as a bare chain."""
    from nacl.signing import SigningKey
    from sqlalchemy import select

    from linkage.db import Base, make_engine, session_factory, sqlite_url
    from linkage.records.ledger import Ledger, RecordWriter
    from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
    from linkage.records.models import RECORDS, TABLES, entry_bytes_sql
    from linkage.records.verify import verify

    engine = make_engine(sqlite_url(work_dir / "ledger-bench.db"))
    Base.metadata.create_all(engine, tables=list(TABLES))
    ledger = Ledger(SigningKey.generate(), "bench")
    start = datetime(2026, 4, 1, tzinfo=UTC)
    batch = [
        AccessRecord(
            occurred_at=start + timedelta(milliseconds=i),
            ledger="server:bench",
            event=RecordEvent.PROVIDED,
            actor_kind=ActorKind.ORGANIZATION,
            actor_id="org.city-27140",
            procedure="koki-koreisha.hokenryo.fuka",
            requester="org.osaka-koiki",
            provider="org.city-27140",
            data_items=("local_tax.income", "local_tax.household"),
            subject=f"U27140{i:09d}",
            permit_id=f"permit-{i:032x}",
            query_id=f"query-{i:032x}",
            outcome=Outcome.PROVIDED,
        )
        for i in range(records)
    ]
    writer = RecordWriter(ledger, session_factory(engine))

    async def handler(share: list[AccessRecord]) -> None:
        for record in share:
            await writer.append(record)

    began = time.perf_counter()
    await asyncio.gather(*(handler(batch[n::handlers]) for n in range(handlers)))
    await writer.close()
    append_s = time.perf_counter() - began

    began = time.perf_counter()
    report = await asyncio.to_thread(
        verify, engine, "server:bench", ledger.verify_keys(), workers=workers
    )
    verify_s = time.perf_counter() - began
    if not report.ok:
        raise RuntimeError(report.describe())

    with engine.connect() as conn:
        bodies = [
            body
            for (body,) in conn.execute(
                select(entry_bytes_sql(conn.dialect.name))
                .where(RECORDS.c.ledger == "server:bench")
                .order_by(RECORDS.c.seq)
            )
        ]
    engine.dispose()
    bare_s = min(_bare_chain(bodies) for _ in range(3))
    return LedgerBench(records, records / append_s, records / verify_s, records / bare_s)


def _bare_chain(bodies: list[bytes]) -> float:
    sha256, digest = hashlib.sha256, bytes(32)
    began = time.perf_counter()
    for body in bodies:
        digest = sha256(digest + body).digest()
    return time.perf_counter() - began


def main(argv: list[str]) -> int:
    """``python -m linkage.records.bench [--records N] [--handlers N] [--workers N]``."""
    parser = argparse.ArgumentParser(prog="python -m linkage.records.bench")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--handlers", type=int, default=200)
    parser.add_argument("--workers", type=int, help="verify processes (default: by size)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        run = measure(
            Path(work), records=args.records, handlers=args.handlers, workers=args.workers
        )
        result = asyncio.run(run)
    for name, value in asdict(result).items():
        print(f"{name:>18}: {value:,.0f}")
    print(f"{'verify_ratio':>18}: {result.verify_ratio:.2f} of the bare chain")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
