// @proompteng/facteur-client: facteur's protobuf contract for TypeScript and JavaScript, and
// small clients over it. Everything under ./gen is generated from ../../proto by
// `npm run generate` (buf + protoc-gen-es); this file is the only hand-written code.
import { readFileSync } from "node:fs";
import { create, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService } from "./gen/facteur/v1/admin_pb.js";
import { CodexService } from "./gen/facteur/v1/codex_pb.js";
import { CommandService } from "./gen/facteur/v1/command_pb.js";
import { DispatchService } from "./gen/facteur/v1/dispatch_pb.js";
import { CodexTaskSchema } from "./gen/proompteng/froussard/v1/codex_task_pb.js";

export * from "./gen/facteur/v1/admin_pb.js";
export * from "./gen/facteur/v1/codex_pb.js";
export * from "./gen/facteur/v1/command_pb.js";
export * from "./gen/facteur/v1/dispatch_pb.js";
export * from "./gen/facteur/v1/run_pb.js";
/** `proompteng.froussard.v1`: the CodexTask producers send. */
export * as froussard from "./gen/proompteng/froussard/v1/codex_task_pb.js";
/** `proompteng.facteur.v1`: the CommandEvent of the old Discord front end. */
export * as legacy from "./gen/proompteng/facteur/v1/contract_pb.js";
export { CodexTaskSchema, CodexTaskStage } from "./gen/proompteng/froussard/v1/codex_task_pb.js";
export { create, fromJson, toBinary, toJson };

/**
 * Clients of facteur's four services over gRPC (HTTP/2), the bearer token attached to every
 * call. `url`: `http://host:50051` or `https://…`; `caFile`: a PEM CA to trust for https.
 */
export function createFacteurClient({ url, token, caFile } = {}) {
  if (!url) throw new TypeError("createFacteurClient: url is required");
  const interceptors = [];
  if (token) {
    interceptors.push((next) => async (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  const nodeOptions = caFile ? { ca: readFileSync(caFile) } : undefined;
  const transport = createGrpcTransport({ baseUrl: url, interceptors, nodeOptions });
  return {
    codex: createClient(CodexService, transport),
    admin: createClient(AdminService, transport),
    command: createClient(CommandService, transport),
    dispatch: createClient(DispatchService, transport),
  };
}

/** An HTTP error answer of facteur (status, and the server's `{error}` message). */
export class FacteurHttpError extends Error {
  constructor(status, message) {
    super(`facteur answered ${status}: ${message}`);
    this.name = "FacteurHttpError";
    this.status = status;
  }
}

/**
 * Sends a CodexTask to the compatibility endpoint `POST <baseUrl>/codex/tasks`, as binary
 * protobuf (or proto-JSON with `json: true`), and returns the parsed 202 answer
 * (`{stage, namespace, workflowName, submittedAt, duplicate}`). A task may be a message or an
 * init object for `create(CodexTaskSchema, …)`.
 */
export async function postCodexTask(baseUrl, task, { token, json = false } = {}) {
  const message = task?.$typeName ? task : create(CodexTaskSchema, task);
  const headers = {
    "content-type": json ? "application/json" : "application/x-protobuf",
  };
  if (token) headers.authorization = `Bearer ${token}`;
  const body = json
    ? JSON.stringify(toJson(CodexTaskSchema, message))
    : toBinary(CodexTaskSchema, message);
  const res = await fetch(new URL("/codex/tasks", baseUrl), { method: "POST", headers, body });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = { error: text };
  }
  if (res.status !== 202) {
    throw new FacteurHttpError(res.status, parsed.error ?? text);
  }
  return parsed;
}
