"""The committed code in taskservice/v1 is exactly what `make proto` makes from protos/."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
GENERATED = ROOT / "taskservice" / "v1"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ]
    )
    assert status == 0
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "taskservice" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED.glob("*_pb2*.py*")}
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"run `make proto`: stale or missing generated files {stale}"
