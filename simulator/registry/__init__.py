"""The resident registry and J-LIS stand-in (住民基本台帳ネットワーク／J-LIS).

Owns the residents it knows (resident code, a blind index of the individual number, the
municipality) and the issuance of processing serials (処理通番) for linkage-code requests
(符号要求): a unified address server names a person by individual number, the registry finds
the resident code, hands serial and resident code to the network, and answers with the serial
alone.

Layout: ``models`` (``registry_residents``), ``residents`` (domain: loading, lookup, issuance;
no grpc), ``network_client`` (the call to the network), ``service`` and ``app``.

Must never: store an individual number in the clear, return a resident code, log either, or
issue a serial for an organization other than the caller's.
"""
