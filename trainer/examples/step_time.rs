//! Times training steps of the Fashion-MNIST teacher on random data (for tuning).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor};
use infergate_runtime::candle::Arch;
use infergate_trainer::train::init_params;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arch: Arch = serde_json::from_str(&std::env::args().nth(1).unwrap_or_else(|| {
        r#"{"kind":"cnn","height":28,"width":28,"channels":[16,32],"hidden":128,"classes":10}"#
            .into()
    }))?;
    let batch: usize = std::env::args().nth(2).map_or(128, |b| b.parse().unwrap());
    let vars = init_params(&arch, 1)?;
    let params = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let net = infergate_runtime::candle::Net::new(arch.clone(), params)?;
    let x = Tensor::rand(0f32, 1f32, (batch, arch.features()), &Device::Cpu)?;
    let y = Tensor::zeros(batch, candle_core::DType::U32, &Device::Cpu)?;
    for i in 0..6 {
        let t = Instant::now();
        let out = net.forward(&x)?;
        let f = t.elapsed();
        let loss = candle_nn::loss::cross_entropy(&out, &y)?;
        let _g = loss.backward()?;
        if i > 0 {
            println!(
                "forward {:?} total {:?} per sample {:?}",
                f,
                t.elapsed(),
                t.elapsed() / batch as u32
            );
        }
    }
    Ok(())
}
