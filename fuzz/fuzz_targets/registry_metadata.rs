//! What the registry reads from files and records it did not write itself: artifact type
//! detection, the ONNX graph's signature, safetensors metadata, and the JSON columns of a
//! version (signature, lineage, drift baseline).
#![no_main]

use infergate_registry::{Baseline, Lineage, Signature, inspect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inspect::detect(data);
    let _ = inspect::onnx_signature(data);
    let _ = inspect::safetensors_signature(data);
    let _ = serde_json::from_slice::<Signature>(data);
    let _ = serde_json::from_slice::<Lineage>(data);
    if let Ok(baseline) = serde_json::from_slice::<Baseline>(data) {
        let _ = serde_json::to_vec(&baseline);
    }
});
