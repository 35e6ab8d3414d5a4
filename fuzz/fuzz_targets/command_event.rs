//! `POST /events`: a binary CommandEvent, decoded and validated as the handler does.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match facteur_server::http::event_request(data) {
        Ok(req) => {
            assert!(!req.command.trim().is_empty());
            let key = req.interaction.interaction_id.clone();
            assert!(!key.is_empty(), "an accepted event has an idempotency key");
            if let Ok(i) = req.interaction.validate() {
                assert_eq!(i.interaction_id, key);
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
