"""The collector's plan costs a bounded number of statements, however many organizations the
directory holds: no look-up per organization, no load of every directory row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

from linkage.db import Base
from linkage.rpc import Security
from simulator.network.codes import CodeDeriver
from simulator.network.directory import Directory
from simulator.network.disclosure import PersonRecordsCollector
from simulator.network.keystore import CodeSecrets
from simulator.network.models import IssuedCode, Organization

AT = datetime(2026, 6, 1, tzinfo=UTC)
PERSON = b"p" * 32


class _NoDirectory:
    def codes(self) -> list[str]:
        raise AssertionError("the plan must not load every directory entry")


def test_the_plan_needs_a_few_statements_for_a_thousand_organizations() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    deriver = CodeDeriver(CodeSecrets(k_person=b"k" * 32, k_code=b"c" * 32))
    organizations = [f"org-{n:04d}" for n in range(1000)]
    holding = {"org-0007", "org-0500", "org-0999"}
    with sessions.begin() as session:
        session.add_all(
            Organization(
                code=org,
                display_name=org,
                capacities=[],
                endpoint="",
                created_at=AT,
                updated_at=AT,
            )
            for org in organizations
        )
        session.add_all(
            IssuedCode(
                organization=org,
                linkage_code=deriver.linkage_code(PERSON, org),
                person_key=PERSON,
                issued_at=AT,
            )
            for org in sorted(holding)
        )
        # Someone else's code at another organization is not the person's.
        session.add(
            IssuedCode(
                organization="org-0001",
                linkage_code=deriver.linkage_code(b"q" * 32, "org-0001"),
                person_key=b"q" * 32,
                issued_at=AT,
            )
        )
    collector = PersonRecordsCollector(
        sessions=sessions,
        deriver=deriver,
        directory=cast(Directory, _NoDirectory()),
        security=Security(None, "network"),
    )
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    plan = collector._plan("org-0007", deriver.linkage_code(PERSON, "org-0007"))

    assert plan.to_ask == {org: deriver.linkage_code(PERSON, org) for org in holding - {"org-0007"}}
    assert plan.unknown == []
    assert len(statements) <= 12, statements
