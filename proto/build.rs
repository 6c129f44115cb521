//! Generates the gRPC code with the protoc binary vendored by `protoc-bin-vendored`,
//! so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe_set_protoc(&protoc);
    tonic_prost_build::configure()
        // Unimplemented RPCs answer UNIMPLEMENTED by default (test servers implement a subset).
        .generate_default_stubs(true)
        // Raw tensor payloads are `Bytes` so they are sliced, never copied.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_protos(&["proto/inference.proto", "proto/health.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

fn unsafe_set_protoc(path: &std::path::Path) {
    #[allow(unsafe_code)]
    // SAFETY: the build script has no other threads reading the environment.
    unsafe {
        std::env::set_var("PROTOC", path);
    }
}
