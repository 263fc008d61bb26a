"""Access-record ledger tests: format, chain, group commit, tamper detection, retention, export."""
