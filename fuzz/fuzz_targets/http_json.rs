//! An HTTP infer body that is JSON only: decoding either fails with an error or yields a
//! request whose every tensor holds exactly the elements its shape declares.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = infergate_server::decode::http(data, bytes::Bytes::new()) {
        for input in &req.inputs {
            let declared: i64 = input.tensor.shape().iter().product();
            assert_eq!(declared as usize, input.tensor.len());
            let _ = input.tensor.first_non_finite();
        }
    }
});
