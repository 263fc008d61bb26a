"""Disclosure of a tenant's access records about one person (マイナポータル-style).

Owns ``disclose``: the records in the tenant's own ledger (``server:<tenant>``) whose subject is
the person's unified number or their linkage code here, oldest first.

Must never: return a record of another tenant's ledger, or accept an individual number.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from linkage.errors import FieldViolation, InvalidArgument
from linkage.records.disclosure import StoredRecord, disclose
from server import repository as repo
from server.content import unified_number_problem
from server.records import ledger_of


def disclose_person(
    sessions: sessionmaker[Session], tenant: str, unified_number: str
) -> list[StoredRecord]:
    """The tenant's records about the person (blocking: run it in a thread)."""
    problem = unified_number_problem(unified_number)
    if problem is not None:
        raise InvalidArgument(
            "INVALID_UNIFIED_NUMBER",
            problem,
            violations=(FieldViolation("unified_number", problem),),
        )
    with repo.tenant_unit_of_work(sessions, tenant) as session:
        subjects = {unified_number}
        code = repo.code_of(session, tenant, unified_number)
        if code is not None:
            subjects.add(code.linkage_code)
        return disclose(session, subjects, ledgers=[ledger_of(tenant)])
