//! `POST /codex/tasks` and `CodexService.SubmitTask`: a binary CodexTask.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use std::sync::LazyLock;

static CONFIG: LazyLock<facteur_config::Config> = LazyLock::new(facteur_fuzz::config);

fuzz_target!(|data: &[u8]| {
    if let Ok(task) = facteur_proto::froussard::CodexTask::decode(data) {
        facteur_fuzz::codex_task(&task, &CONFIG);
    }
});
