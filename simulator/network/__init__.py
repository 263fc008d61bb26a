"""The Information Provision Network (情報提供ネットワークシステム), simulated.

Owns the organization directory (codes, capacities, endpoints, signing keys), linkage-code
issuance (符号: a keyed hash per person and organization, from processing serials handed over
by the resident registry), permits (情報提供許可証: checked against the permission list, signed
once per batch), routing of permit batches to providers and of sealed answers back, and its own
ledger of access records (``network``).

Layout: ``models`` (tables ``network_*``), ``repository`` (queries on a Session), domain modules
that never import grpc (``directory``, ``codes``, ``permits``, ``routing``, ``queries``,
``disclosure``, ``ledger``, ``refusals``, ``ratelimit``, ``keystore``), then the gRPC edge
(``service``, ``transport``) and ``app`` (``Config``, ``start``).

Must never: read what it routes (answers pass through as opaque signed bytes), store or return
a resident code, return one organization's linkage code to another, or let an organization act
as another.
"""
