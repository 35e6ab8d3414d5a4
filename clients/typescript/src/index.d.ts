import type { Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AdminService } from "./gen/facteur/v1/admin_pb.js";
import type { CodexService } from "./gen/facteur/v1/codex_pb.js";
import type { CommandService } from "./gen/facteur/v1/command_pb.js";
import type { DispatchService } from "./gen/facteur/v1/dispatch_pb.js";
import type { CodexTask, CodexTaskSchema } from "./gen/proompteng/froussard/v1/codex_task_pb.js";

export * from "./gen/facteur/v1/admin_pb.js";
export * from "./gen/facteur/v1/codex_pb.js";
export * from "./gen/facteur/v1/command_pb.js";
export * from "./gen/facteur/v1/dispatch_pb.js";
export * from "./gen/facteur/v1/run_pb.js";
export * as froussard from "./gen/proompteng/froussard/v1/codex_task_pb.js";
export * as legacy from "./gen/proompteng/facteur/v1/contract_pb.js";
export { CodexTaskSchema, CodexTaskStage } from "./gen/proompteng/froussard/v1/codex_task_pb.js";
export { create, fromJson, toBinary, toJson } from "@bufbuild/protobuf";

export interface FacteurClientOptions {
  /** `http://host:50051` or `https://…`. */
  url: string;
  /** Bearer token sent with every call. */
  token?: string;
  /** PEM CA file to trust for an https URL. */
  caFile?: string;
}

export interface FacteurClient {
  codex: Client<typeof CodexService>;
  admin: Client<typeof AdminService>;
  command: Client<typeof CommandService>;
  dispatch: Client<typeof DispatchService>;
}

export declare function createFacteurClient(options: FacteurClientOptions): FacteurClient;

/** The 202 answer of `POST /codex/tasks`. */
export interface CodexTaskAccepted {
  stage: string;
  namespace: string;
  workflowName: string;
  submittedAt: string;
  duplicate: boolean;
}

export declare class FacteurHttpError extends Error {
  readonly status: number;
}

export declare function postCodexTask(
  baseUrl: string,
  task: CodexTask | MessageInitShape<typeof CodexTaskSchema>,
  options?: { token?: string; json?: boolean },
): Promise<CodexTaskAccepted>;
