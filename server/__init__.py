"""The intermediate server (中間サーバー), one platform hosting many organizations.

Seed Ⅰ.2 system 5 lists its functions: code management (符号管理機能), query (情報照会機能),
provision (情報提供機能), existing-system connection (既存システム接続機能), access records
(情報提供等記録管理機能), the duplicate store (情報提供データベース管理機能), data send/receive
with the network (データ送受信機能), security management (セキュリティ管理機能), staff
authentication and authorization (職員認証・権限管理機能) and system management (システム管理機能).

Owns, per tenant organization: linkage code ↔ unified number, duplicates (副本), query results
for a limited time, the review queue, staff accounts, and its ledger of access records.

Must never: see an individual number or a resident code; answer without a valid permit and its
own check of the permission list; let one tenant read or change another tenant's data; send
personal data anywhere but sealed to the requester's key.

Layout. Domain modules never import grpc:

- ``tenancy``: tenants, their key rings and data keys, caller ↔ tenant binding (AIP-131);
- ``models`` (tables ``server_*``, each with ``tenant``) and ``repository`` (every SQL
  statement, tenant-scoped, bulk writes);
- ``codes`` (符号管理), ``content`` (typed format checks), ``duplicates`` (副本: import,
  versions, export, flags, in-force lookup), ``duplicates_file`` (the JSON-lines format);
- ``querykeys`` (rotating X25519 requester keys), ``directory`` (cached directory keys),
  ``queries`` (requester: submit, batch, verify, store, wait, late answers), ``provision``
  (provider: verify permits, own permission check, seal or hold), ``review`` (approve, decline,
  deliver late), ``retention`` (purge), ``disclosure``, ``records`` (ledger ``server:<org>``),
  ``notify`` (in-process wake-ups);
- ``ports`` (what the domain needs from the network) and ``network_client`` (its gRPC client,
  one ``org.<code>`` channel per tenant);
- the gRPC edge: ``service_intermediate`` (IntermediateServerService, for ``ua.<code>``) and
  ``service_inbound`` (InboundService, for ``network``); ``app`` (``Config``, ``start``);
  ``cli_duplicates`` (``linkage duplicates``).
"""
