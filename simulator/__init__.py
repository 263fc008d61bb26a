"""The simulated world around the gateway.

- ``simulator.network``: the Information Provision Network (情報提供ネットワークシステム):
  organization directory, linkage codes (符号), permits (情報提供許可証), routing, its records.
- ``simulator.registry``: the resident registry and J-LIS stand-in (住民基本台帳ネットワーク /
  地方公共団体情報システム機構) that issues processing serials (処理通番) for code requests.
- ``simulator.population``: a deterministic synthetic population (no real personal data).
- ``simulator.world``: mock organizations and the eligibility clients of late-stage elderly
  medical care (後期高齢者医療), and the demo.

The network must never be able to read what it routes: it forwards sealed answers as bytes.
"""
