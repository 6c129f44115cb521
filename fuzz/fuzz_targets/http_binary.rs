//! An HTTP infer body with Triton's binary tensor extension: the first two bytes choose the
//! Inference-Header-Content-Length, the JSON header and the binary tail follow. Slicing by
//! `binary_data_size` and BYTES length prefixes must never read out of bounds or panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let body = Bytes::copy_from_slice(&data[2..]);
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]]))).min(body.len());
    if let Ok(req) = infergate_server::decode::http(&body[..split], body.slice(split..)) {
        for input in &req.inputs {
            let declared: i64 = input.tensor.shape().iter().product();
            assert_eq!(declared as usize, input.tensor.len());
        }
    }
});
