//! A serialized gRPC ModelInferRequest, decoded and converted into tensors as the gRPC front
//! end does (raw_input_contents, typed contents, BYTES length prefixes, parameters).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = infergate_server::decode::grpc(data) {
        for input in &req.inputs {
            let declared: i64 = input.tensor.shape().iter().product();
            assert_eq!(declared as usize, input.tensor.len());
        }
    }
});
