//! The Discord interactions endpoint after the signature check: any JSON body, parsed into
//! what it asks of the control plane.
#![no_main]
use facteur_discord::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match facteur_discord::request(&v) {
        Some(Request::Invoke(r)) => assert!(r.context.is_some()),
        Some(Request::Interact(r)) => assert!(r.context.is_some()),
        Some(Request::Autocomplete(r)) => assert!(r.context.is_some()),
        Some(Request::Ping) => assert_eq!(v["type"], 1),
        None => {}
    }
});
