//! The main configuration file: parsed, layered over the defaults and validated (routes
//! included), or refused with every error at once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = infergate_config::Config::parse(text, "fuzz") {
            assert!(!e.to_string().is_empty());
        }
    }
});
