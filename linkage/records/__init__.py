"""The access-record ledger (情報提供等記録): tamper-evident, kept seven years, disclosable.

One record format for every place that keeps records (the requester's and the provider's
intermediate servers, the network, the unified address server), one hash chain per ledger with
signed checkpoints, verification that names the first bad position, retention behind signed
anchors, disclosure and export. FORMAT.md specifies the bytes for independent auditors.

Modules (import what you need; this package imports nothing heavy)::

    model       AccessRecord, RecordEvent, ActorKind, Outcome, canonical bytes
    models      the SQLAlchemy tables (access_records, _heads, _checkpoints, _anchors)
    ledger      Ledger (append in the caller's transaction), RecordWriter (group commit)
    verify      verify, verify_many, ledger_ids, verify_jsonl, VerifyReport, Problem, ProblemKind
    spans       the range-linking loop verify runs in this process or in worker processes
    retention   purge, RetentionJob (purge on a schedule), DEFAULT_RETENTION
    disclosure  disclose, export_jsonl
    keyfile     verify-key and signing-key files
    cli         ``linkage records``
    bench       append/verify throughput against the bare sha256 chain

Nothing here may ever store an individual number, or update or delete a record other than
through ``retention.purge`` behind a signed anchor.
"""

from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent

__all__ = ["AccessRecord", "ActorKind", "Outcome", "RecordEvent"]
