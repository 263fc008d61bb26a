"""The contracts: committed stubs match proto/, every RPC and field is documented."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from linkage import protogen

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    fresh = tmp_path / protogen.PACKAGE_DIR
    committed = ROOT / protogen.PACKAGE_DIR
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(
        p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
    )
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert mismatch == [], "run `make protos` and commit the result"
    assert errors == []


@pytest.mark.parametrize("proto", protogen.proto_files(), ids=lambda p: p.name)
def test_every_service_is_named_service_and_every_enum_has_an_unspecified_zero(proto: Path) -> None:
    text = (protogen.PROTO_ROOT / proto).read_text()
    assert "package linkage.v1;" in text
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("service "):
            assert stripped.split()[1].endswith("Service")
    for block in text.split("enum ")[1:]:
        name = block.split()[0]
        upper = "".join("_" + c if c.isupper() else c for c in name).lstrip("_").upper()
        assert f"{upper}_UNSPECIFIED = 0;" in block
