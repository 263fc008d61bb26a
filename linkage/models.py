"""Imports every system's ORM models so ``Base.metadata`` holds the whole schema (Alembic)."""

from __future__ import annotations

import linkage.records.models
import server.models
import simulator.network.models
import simulator.registry.models
import unified_address.models

__all__ = ["linkage", "server", "simulator", "unified_address"]
