//! The configuration loader: a YAML file and environment variables, for each process.
//! Input: YAML, then optionally a NUL byte and `NAME=value` lines for the environment.
#![no_main]
use facteur_config::{Process, load_from};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: BTreeMap<String, String> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for process in [
        Process::Server,
        Process::DiscordAdapter,
        Process::ArgoAdapter,
    ] {
        match load_from(Some(yaml), &env, process) {
            // What loads must validate the same way again (validation is deterministic) and
            // never expose a secret through Debug.
            Ok(c) => {
                assert!(
                    c.validate(process).is_empty(),
                    "load_from returned an invalid config"
                );
                let shown = format!("{c:?}");
                if c.discord.bot_token.expose().len() > 8 {
                    assert!(
                        !shown.contains(c.discord.bot_token.expose()),
                        "bot token in Debug"
                    );
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
