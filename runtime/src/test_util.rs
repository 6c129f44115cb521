//! Fake backends (echo, slow, failing, panicking) so tests of the layers above need no weights.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings,
    TensorSpec,
};

/// What a fake backend does with each execution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Output i is input i, renamed to output i's name.
    Echo,
    /// Sleeps, then echoes.
    Slow(Duration),
    /// Returns a backend error.
    Fail,
    /// Panics.
    Panic,
    /// Panics when the first element of the first input is negative (a poison request),
    /// otherwise echoes.
    PanicOnNegative,
}

/// A factory of fake backends with a given signature.
#[derive(Debug)]
pub struct FakeFactory {
    behavior: Behavior,
    signature: Signature,
    /// Number of executions started, across instances.
    pub executions: Arc<AtomicUsize>,
    /// Number of backend instances created (a panicking instance is replaced by a new one).
    pub created: Arc<AtomicUsize>,
}

impl FakeFactory {
    pub fn new(behavior: Behavior, signature: Signature) -> Self {
        Self {
            behavior,
            signature,
            executions: Arc::default(),
            created: Arc::default(),
        }
    }

    /// One FP32 input `INPUT0` and one output `OUTPUT0`, both `[-1, -1]`.
    pub fn fp32(behavior: Behavior) -> Self {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            shape: vec![-1, -1],
        };
        Self::new(
            behavior,
            Signature {
                inputs: vec![spec("INPUT0")],
                outputs: vec![spec("OUTPUT0")],
            },
        )
    }
}

impl BackendFactory for FakeFactory {
    fn platform(&self) -> &str {
        "fake"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeBackend {
            behavior: self.behavior,
            outputs: self
                .signature
                .outputs
                .iter()
                .map(|o| o.name.as_str().into())
                .collect(),
            executions: Arc::clone(&self.executions),
        }))
    }
}

struct FakeBackend {
    behavior: Behavior,
    outputs: Vec<Arc<str>>,
    executions: Arc<AtomicUsize>,
}

impl Backend for FakeBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        _: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        match self.behavior {
            Behavior::Echo => {}
            Behavior::Slow(d) => std::thread::sleep(d),
            Behavior::Fail => return Err(RuntimeError::Backend("fake backend failure".into())),
            Behavior::Panic => panic!("fake backend panic"),
            Behavior::PanicOnNegative => {
                let first = inputs
                    .first()
                    .and_then(|i| i.tensor.to_vec::<f32>())
                    .and_then(|v| v.first().copied());
                if first.is_some_and(|x| x < 0.0) {
                    panic!("fake backend panic on a negative input");
                }
            }
        }
        Ok(inputs
            .iter()
            .zip(&self.outputs)
            .map(|(input, name)| NamedTensor::new(Arc::clone(name), input.tensor.clone()))
            .collect())
    }
}
