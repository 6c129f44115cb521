//! A model's config.toml: parsed and checked, or refused with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = infergate_config::ModelConfig::parse(text, "fuzz") {
            let _ = config.batching();
        }
    }
});
