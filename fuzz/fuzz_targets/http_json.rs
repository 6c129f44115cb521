//! An HTTP infer body that is JSON only: decoding either fails with an error or yields a
//! request whose every tensor holds exactly the elements its shape declares; and the server's
//! reader (one pass where it can) decodes it exactly as serde_json alone does, or fails where
//! serde_json's reading fails.
#![no_main]

use infergate_server::decode::summary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = infergate_server::decode::http(data, bytes::Bytes::new());
    let reference = infergate_server::decode::http_serde(data, bytes::Bytes::new());
    assert_eq!(
        decoded.as_ref().map(summary).ok(),
        reference.as_ref().map(summary).ok(),
        "{}",
        String::from_utf8_lossy(data)
    );
    if let Ok(req) = decoded {
        for input in &req.inputs {
            let declared: i64 = input.tensor.shape().iter().product();
            assert_eq!(declared as usize, input.tensor.len());
            let _ = input.tensor.first_non_finite();
        }
    }
});
