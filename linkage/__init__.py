"""The shared kernel of the information-linkage gateway (情報連携).

Owns what every system in the simulation uses the same way: the generated contracts
(``linkage.v1``), the command line (``linkage``), the error model, logging, storage
plumbing, the PKI and the payload crypto, and the access-record ledger (情報提供等記録).

It must never hold domain state of its own: each real-world system lives in its own
top-level package (``server``, ``unified_address``, ``permission_list``, ``simulator``).
Keep imports here light: ``linkage --help`` must start fast.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
