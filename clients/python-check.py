#!/usr/bin/env python3
"""Generates Python code for every proto with grpcio-tools (as a Python user would) into a
temporary directory and imports every generated module: a protobuf change that breaks another
language's generation fails CI. With `--live <facteur binary>`, also starts that server on free
ports and submits a CodexTask with grpcio's gzip compression. Run by .ci/run with the venv's
python."""
import importlib, json, os, pathlib, socket, subprocess, sys, tempfile, time, urllib.request

root = pathlib.Path(__file__).resolve().parent.parent
protos = sorted(str(p.relative_to(root / "proto")) for p in (root / "proto").rglob("*.proto"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live(binary, work):
    import grpc
    from google.protobuf import json_format
    from facteur.v1 import admin_pb2, admin_pb2_grpc, codex_pb2, codex_pb2_grpc
    from proompteng.froussard.v1 import codex_task_pb2

    grpc_port, http_port = free_port(), free_port()
    token = "py-codex-token-0123456789"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FACTEUR_SERVER_GRPC_LISTEN_ADDRESS": f"127.0.0.1:{grpc_port}",
        "FACTEUR_SERVER_LISTEN_ADDRESS": f"127.0.0.1:{http_port}",
        "FACTEUR_DATABASE_URL": f"sqlite://{work}/facteur.db?mode=rwc",
        "FACTEUR_CODEX_ENABLE_IMPLEMENTATION_ORCHESTRATION": "true",
        "FACTEUR_AUTH_TOKENS": json.dumps([{"name": "py", "role": "codex-submitter", "token": token}]),
        "FACTEUR_LOG_LEVEL": "warn",
    }
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz").status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{binary} not ready within 30 s")
            time.sleep(0.1)
        task = json_format.Parse(
            (root / "tests/fixtures/codex-task.json").read_text(), codex_task_pb2.CodexTask()
        )
        task.delivery_id = "python-gzip-1"
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", compression=grpc.Compression.Gzip)
        auth = [("authorization", f"Bearer {token}")]
        codex = codex_pb2_grpc.CodexServiceStub(channel)
        answer = codex.SubmitTask(codex_pb2.SubmitTaskRequest(task=task), metadata=auth,
                                  compression=grpc.Compression.Gzip, timeout=10)
        assert answer.task_run_id and not answer.duplicate, answer
        try:
            admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
            raise SystemExit("GetStatus without a token succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        print("python: a gzip-compressed SubmitTask accepted by the real server")
    finally:
        server.terminate()
        server.wait(timeout=30)


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
    if len(sys.argv) == 3 and sys.argv[1] == "--live":
        with tempfile.TemporaryDirectory() as work:
            live(sys.argv[2], work)
