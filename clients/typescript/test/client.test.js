// The package against a real facteur: the server binary started on free ports (SQLite, auth on,
// Codex orchestration on), driven as a TypeScript producer would drive it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import {
  CodexService,
  CodexTaskSchema,
  FacteurHttpError,
  createFacteurClient,
  fromJson,
  postCodexTask,
} from "../src/index.js";

const ROOT = resolve(import.meta.dirname, "../../..");
const BIN = process.env.FACTEUR_BIN ?? join(ROOT, "target/debug/facteur");
const SAMPLE = JSON.parse(readFileSync(join(ROOT, "tests/fixtures/codex-task.json"), "utf8"));
const CODEX = "ts-codex-token-0123456789";
const ADMIN = "ts-admin-token-0123456789";

const freePort = () =>
  new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

let server;
let dir;
let grpcUrl;
let httpUrl;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "facteur-ts-"));
  const [grpc, http] = [await freePort(), await freePort()];
  grpcUrl = `http://127.0.0.1:${grpc}`;
  httpUrl = `http://127.0.0.1:${http}`;
  server = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      FACTEUR_SERVER_GRPC_LISTEN_ADDRESS: `127.0.0.1:${grpc}`,
      FACTEUR_SERVER_LISTEN_ADDRESS: `127.0.0.1:${http}`,
      FACTEUR_DATABASE_URL: `sqlite://${join(dir, "facteur.db")}?mode=rwc`,
      FACTEUR_CODEX_ENABLE_IMPLEMENTATION_ORCHESTRATION: "true",
      FACTEUR_AUTH_TOKENS: JSON.stringify([
        { name: "producer", role: "codex-submitter", token: CODEX },
        { name: "ops", role: "admin", token: ADMIN },
      ]),
      FACTEUR_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${httpUrl}/readyz`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`facteur (${BIN}) not ready within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  if (server) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

const task = (delivery, change = {}) =>
  Object.assign(fromJson(CodexTaskSchema, SAMPLE), { deliveryId: delivery }, change);

test("a task submitted over gRPC is accepted once; its replay is a duplicate", async () => {
  const { codex } = createFacteurClient({ url: grpcUrl, token: CODEX });
  const first = await codex.submitTask({ task: task("ts-grpc-1") });
  assert.equal(first.duplicate, false);
  assert.ok(first.taskRunId);
  const again = await codex.submitTask({ task: task("ts-grpc-1") });
  assert.equal(again.duplicate, true);
  assert.equal(again.taskRunId, first.taskRunId);
});

test("a task posted to the HTTP endpoint, binary and JSON", async () => {
  for (const [json, delivery] of [[false, "ts-http-bin"], [true, "ts-http-json"]]) {
    const answer = await postCodexTask(httpUrl, task(delivery), { token: CODEX, json });
    assert.equal(answer.stage, "implementation");
    assert.equal(answer.duplicate, false);
    assert.ok(answer.workflowName);
    const replay = await postCodexTask(httpUrl, task(delivery), { token: CODEX, json });
    assert.equal(replay.duplicate, true);
  }
});

test("a bad task is refused naming the field, on both ways in", async () => {
  const bad = task("ts-bad", { repository: "r".repeat(141) });
  const { codex } = createFacteurClient({ url: grpcUrl, token: CODEX });
  await assert.rejects(codex.submitTask({ task: bad }), (e) => {
    assert.ok(e instanceof ConnectError);
    assert.equal(e.code, Code.InvalidArgument);
    assert.match(e.rawMessage, /repository/);
    return true;
  });
  await assert.rejects(postCodexTask(httpUrl, bad, { token: CODEX }), (e) => {
    assert.ok(e instanceof FacteurHttpError);
    assert.equal(e.status, 400);
    assert.match(e.message, /repository/);
    return true;
  });
});

test("GetStatus with a token, and UNAUTHENTICATED without", async () => {
  const { admin } = createFacteurClient({ url: grpcUrl, token: ADMIN });
  const status = await admin.getStatus({});
  assert.equal(status.ready, true);
  const anonymous = createFacteurClient({ url: grpcUrl });
  await assert.rejects(anonymous.admin.getStatus({}), (e) => {
    assert.equal(e.code, Code.Unauthenticated);
    return true;
  });
});

test("a gzip-compressed request, as connect-node's sendCompression sends it", async () => {
  const transport = createGrpcTransport({
    baseUrl: grpcUrl,
    sendCompression: compressionGzip,
    acceptCompression: [compressionGzip],
    compressMinBytes: 0,
    interceptors: [
      (next) => (req) => {
        req.header.set("authorization", `Bearer ${CODEX}`);
        return next(req);
      },
    ],
  });
  const codex = createClient(CodexService, transport);
  const answer = await codex.submitTask({ task: task("ts-gzip") });
  assert.equal(answer.duplicate, false);
});

test("the README's five lines: a minimal task", async () => {
  const { codex } = createFacteurClient({ url: grpcUrl, token: CODEX });
  const t = fromJson(CodexTaskSchema, {
    stage: "CODEX_TASK_STAGE_IMPLEMENTATION",
    repository: "proompteng/lab",
    deliveryId: "d-readme",
  });
  const { taskRunId, duplicate } = await codex.submitTask({ task: t });
  assert.ok(taskRunId);
  assert.equal(duplicate, false);
});
