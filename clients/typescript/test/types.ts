// Compiled (never run) by `tsc` in the package's check: the declarations describe the API.
import {
  CodexTaskStage,
  createFacteurClient,
  postCodexTask,
  type CodexTaskAccepted,
} from "../src/index.js";

const { codex, admin } = createFacteurClient({ url: "http://127.0.0.1:50051", token: "t" });
const accepted: Promise<CodexTaskAccepted> = postCodexTask("http://127.0.0.1:8080", {
  stage: CodexTaskStage.IMPLEMENTATION,
  repository: "proompteng/lab",
  deliveryId: "d-1",
});
void codex.submitTask({ task: { repository: "proompteng/lab" } });
void admin.getStatus({});
void accepted;
