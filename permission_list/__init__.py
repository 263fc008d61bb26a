"""The permission list (照会許可用照合リスト): what may flow, built from the law.

Owns the dataset converted from 番号法 別表第二 (and, from 2024-05-27, 第19条第8号 and its
order), its loader, the O(1) deny-by-default checker, and the conformance kit. The network checks
it before issuing a permit; every provider checks its own copy again before answering.

Must never: allow by default, guess a legal basis it cannot verify, or depend on any server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from permission_list.checker import PermissionList
    from permission_list.loader import load, load_default
    from permission_list.model import Decision, PermissionListError, Row

__all__ = ["Decision", "PermissionList", "PermissionListError", "Row", "load", "load_default"]

# Exports are resolved on first use so that ``import permission_list`` (done by the CLI before
# it knows which subcommand runs) reads no data and imports almost nothing.
_EXPORTS = {
    "PermissionList": "permission_list.checker",
    "load": "permission_list.loader",
    "load_default": "permission_list.loader",
    "Decision": "permission_list.model",
    "PermissionListError": "permission_list.model",
    "Row": "permission_list.model",
}


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'permission_list' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value
