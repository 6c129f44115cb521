//! Training for infergate: candle networks trained on CPU with a seed, knowledge distillation,
//! int8 post-training quantization, ONNX and safetensors export, and registration with
//! lineage, metrics and drift baselines.

pub mod data;
pub mod efficientnet;
pub mod efficientnet_int8;
pub mod eval;
pub mod export;
pub mod import;
pub mod pipeline;
pub mod quantize;
pub mod rng;
pub mod train;
