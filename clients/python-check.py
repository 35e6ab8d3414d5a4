#!/usr/bin/env python3
"""Generates Python code for every proto with grpcio-tools (as a Python user would) into a
temporary directory and imports every generated module: a protobuf change that breaks another
language's generation fails CI. Run by .ci/run with the venv's python."""
import importlib, pathlib, subprocess, sys, tempfile

root = pathlib.Path(__file__).resolve().parent.parent
protos = sorted(str(p.relative_to(root / "proto")) for p in (root / "proto").rglob("*.proto"))
with tempfile.TemporaryDirectory() as out:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root / 'proto'}",
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    modules = sorted(
        str(p.relative_to(out).with_suffix("")).replace("/", ".")
        for p in pathlib.Path(out).rglob("*_pb2*.py")
    )
    for m in modules:
        importlib.import_module(m)
    from facteur.v1 import codex_pb2_grpc  # the stubs a producer uses
    assert hasattr(codex_pb2_grpc, "CodexServiceStub")
    print(f"python: {len(protos)} protos generated, {len(modules)} modules imported")
