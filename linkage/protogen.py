"""Generate the Python stubs in ``linkage/v1`` from ``proto/`` (``make protos``).

Messages get ``*_pb2.py`` with mypy-protobuf ``.pyi`` stubs; services get ``*_pb2_grpc.py``
with typed ``.pyi`` stubs. The output is committed; ``tests/test_contracts.py`` regenerates into
a temporary directory and fails if anything differs, so the committed stubs never drift.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("linkage") / "v1"


def proto_files() -> list[Path]:
    """Every .proto of the v1 package, relative to the proto root."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    bin_dir = Path(sys.executable).parent
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={include}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / PACKAGE_DIR / "__init__.py").write_text(
        '"""Generated from proto/linkage/v1 by `make protos`; do not edit."""\n'
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tmp) / PACKAGE_DIR, target)
    print(f"generated {len(proto_files())} proto files into {PACKAGE_DIR}")


if __name__ == "__main__":
    main()
