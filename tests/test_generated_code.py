"""The committed code in taskservice/v1 is exactly what `make proto` makes from protos/.

That includes the descriptor set reflection serves, so the comments clients read through
reflection are the comments in protos/, and the Connect code (`*_connect.py`, from
protoc-gen-connectrpc with protobuf=google) the HTTP edge serves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
GENERATED = ROOT / "taskservice" / "v1"
DESCRIPTOR_SET = "descriptor_set.binpb"
#: protoc-gen-connectrpc, installed beside this interpreter by `make install`.
CONNECT_PLUGIN = Path(sys.executable).parent / "protoc-gen-connectrpc"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "taskservice" / "v1"
    out.mkdir(parents=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--plugin=protoc-gen-connectrpc={CONNECT_PLUGIN}",
            f"--connectrpc_out={tmp_path}",
            "--connectrpc_opt=protobuf=google",
            "--include_source_info",
            "--include_imports",
            f"--descriptor_set_out={out / DESCRIPTOR_SET}",
            *protos,
        ]
    )
    assert status == 0
    fresh = {p.name: p.read_bytes() for p in out.iterdir()}
    committed = {
        p.name: p.read_bytes()
        for p in [
            *GENERATED.glob("*_pb2*.py*"),
            *GENERATED.glob("*_connect.py"),
            *GENERATED.glob(DESCRIPTOR_SET),
        ]
    }
    assert DESCRIPTOR_SET in fresh
    assert "task_service_connect.py" in fresh
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"run `make proto`: stale or missing generated files {stale}"
