//! `POST /codex/tasks` with `Content-Type: application/json`: a proto-JSON CodexTask.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static CONFIG: LazyLock<facteur_config::Config> = LazyLock::new(facteur_fuzz::config);

fuzz_target!(|data: &[u8]| {
    if let Ok(task) = facteur_proto::codex_task_from_json(data) {
        facteur_fuzz::codex_task(&task, &CONFIG);
    }
});
