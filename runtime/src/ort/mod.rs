//! The ONNX Runtime backend: finding and loading `libonnxruntime` (never downloaded at build
//! time), reading a model's signature from the model, and one session per worker thread.

mod discover;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::ort::environment::Environment;
use ::ort::memory::Allocator;
use ::ort::session::{Session, SessionInputValue};
use ::ort::value::{
    DynTensor, DynValue, Shape, Tensor as OrtTensor, TensorElementType, Utf8Data, ValueType,
};
use bytes::Bytes;

pub use discover::{INSTALL_DIR, LIBRARY_FILE, discover};

use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings, Tensor,
    TensorSpec,
};

/// The KServe platform string for ONNX models.
pub const PLATFORM: &str = "onnx_onnxv1";

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// A handle on the process-wide ONNX Runtime environment.
#[derive(Clone)]
pub struct OrtRuntime {
    env: Environment,
    library: PathBuf,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .finish()
    }
}

impl OrtRuntime {
    /// Loads the shared library (once per process) and creates the environment.
    pub fn init(library: &Path) -> Result<Self, RuntimeError> {
        let mut guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(env) = guard.as_ref() {
            return Ok(Self {
                env: env.clone(),
                library: library.to_path_buf(),
            });
        }
        let env = ::ort::init_from(library)
            .map_err(|e| RuntimeError::Ort(format!("cannot load {}: {e}", library.display())))?
            .with_name("infergate")
            .build()?;
        *guard = Some(env.clone());
        Ok(Self {
            env,
            library: library.to_path_buf(),
        })
    }

    /// The ONNX Runtime environment, for building sessions outside infergate (e.g. golden tests).
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// The shared library this runtime was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Loads an ONNX model file, reading its signature. `intra_op_threads` 0 lets ONNX Runtime
    /// choose.
    pub fn load(&self, path: &Path, intra_op_threads: usize) -> Result<OrtFactory, RuntimeError> {
        self.load_source(ModelSource::File(path.to_path_buf()), intra_op_threads)
    }

    /// Loads an ONNX model from memory (an artifact already read and verified); `origin`
    /// names it in errors.
    pub fn load_bytes(
        &self,
        bytes: Arc<[u8]>,
        origin: &str,
        intra_op_threads: usize,
    ) -> Result<OrtFactory, RuntimeError> {
        self.load_source(
            ModelSource::Memory {
                bytes,
                origin: origin.to_owned(),
            },
            intra_op_threads,
        )
    }

    fn load_source(
        &self,
        source: ModelSource,
        intra_op_threads: usize,
    ) -> Result<OrtFactory, RuntimeError> {
        let session = self.session(&source, intra_op_threads)?;
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(spec)
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(spec)
                .collect::<Result<_, _>>()?,
        };
        Ok(OrtFactory {
            runtime: self.clone(),
            source,
            intra_op_threads,
            signature,
            first: Mutex::new(Some(session)),
        })
    }

    fn session(
        &self,
        source: &ModelSource,
        intra_op_threads: usize,
    ) -> Result<Session, RuntimeError> {
        let load_error = |e: ::ort::Error| RuntimeError::Load {
            path: source.to_string(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(&self.env).map_err(load_error)?;
        if intra_op_threads > 0 {
            builder = builder
                .with_intra_threads(intra_op_threads)
                .map_err(|e| load_error(e.into()))?;
        }
        match source {
            ModelSource::File(path) => builder.commit_from_file(path),
            ModelSource::Memory { bytes, .. } => builder.commit_from_memory(bytes),
        }
        .map_err(load_error)
    }
}

/// Where a model's bytes come from.
#[derive(Debug, Clone)]
enum ModelSource {
    File(PathBuf),
    Memory { bytes: Arc<[u8]>, origin: String },
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Memory { origin, .. } => f.write_str(origin),
        }
    }
}

fn spec(outlet: &::ort::value::Outlet) -> Result<TensorSpec, RuntimeError> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: outlet.name().to_string(),
            dtype: from_ort(*ty).ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "tensor '{}' has element type {ty:?}",
                    outlet.name()
                ))
            })?,
            shape: shape.iter().copied().collect(),
        }),
        other => Err(RuntimeError::Unsupported(format!(
            "'{}' is a {other:?}, only tensors are served",
            outlet.name()
        ))),
    }
}

fn from_ort(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn to_ort(dtype: DataType) -> TensorElementType {
    match dtype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

/// A loaded ONNX model: its signature and what is needed to open more sessions.
pub struct OrtFactory {
    runtime: OrtRuntime,
    source: ModelSource,
    intra_op_threads: usize,
    signature: Signature,
    /// The session opened to read the signature, handed to the first worker.
    first: Mutex<Option<Session>>,
}

impl std::fmt::Debug for OrtFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtFactory")
            .field("source", &self.source.to_string())
            .finish()
    }
}

impl BackendFactory for OrtFactory {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let session = match first {
            Some(session) => session,
            None => self.runtime.session(&self.source, self.intra_op_threads)?,
        };
        Ok(Box::new(OrtBackend {
            session,
            allocator: Allocator::default(),
            outputs: self
                .signature
                .outputs
                .iter()
                .map(|o| Arc::from(o.name.as_str()))
                .collect(),
        }))
    }
}

/// One ONNX Runtime session, owned by one worker thread.
pub struct OrtBackend {
    session: Session,
    allocator: Allocator,
    outputs: Vec<Arc<str>>,
}

impl Backend for OrtBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        let start = Instant::now();
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for input in inputs {
            values.push((
                Cow::Borrowed(&*input.name),
                input_value(&self.allocator, &input.tensor)?.into(),
            ));
        }
        let prepared = Instant::now();
        timings.input = prepared - start;
        let mut run = self.session.run(values)?;
        let ran = Instant::now();
        timings.infer = ran - prepared;
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let value = run.remove(&**name).ok_or_else(|| {
                RuntimeError::Backend(format!("session produced no output '{name}'"))
            })?;
            outputs.push(NamedTensor::new(Arc::clone(name), output_tensor(value)?));
        }
        timings.output = ran.elapsed();
        Ok(outputs)
    }
}

/// A BYTES element as an ONNX string element (bytes are passed through as they are).
#[derive(Clone)]
struct OnnxBytes(Bytes);

impl Utf8Data for OnnxBytes {
    fn as_utf8_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn input_value(allocator: &Allocator, tensor: &Tensor) -> Result<DynValue, RuntimeError> {
    let shape = Shape::new(tensor.shape().iter().copied());
    match tensor.data() {
        crate::TensorData::Fixed(bytes) => {
            let mut value = DynTensor::new(allocator, to_ort(tensor.dtype()), shape)?;
            if !bytes.is_empty() {
                let dst = value.data_ptr_mut().cast::<u8>();
                #[allow(unsafe_code)]
                // SAFETY: ONNX Runtime allocated `dst` for this dtype and shape, which is exactly
                // `bytes.len()` bytes (checked when the `Tensor` was built); the regions are distinct.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
                }
            }
            Ok(value.into_dyn())
        }
        crate::TensorData::Bytes(elements) => {
            if let Some(index) = elements.iter().position(|e| e.contains(&0)) {
                return Err(RuntimeError::InvalidInput(format!(
                    "BYTES element {index} contains a NUL byte, which ONNX string tensors cannot hold"
                )));
            }
            let elements: Vec<OnnxBytes> = elements.iter().cloned().map(OnnxBytes).collect();
            Ok(OrtTensor::from_string_array((shape, &elements[..]))?.into_dyn())
        }
    }
}

fn output_tensor(value: DynValue) -> Result<Tensor, RuntimeError> {
    let ty = *value.data_type();
    let dtype = from_ort(ty)
        .ok_or_else(|| RuntimeError::Unsupported(format!("output element type {ty:?}")))?;
    let shape: Vec<i64> = value.shape().iter().copied().collect();
    if dtype == DataType::Bytes {
        let elements = string_elements(&value, crate::element_count(&shape)?)?;
        return Ok(Tensor::from_elements(shape, elements)?);
    }
    let len = crate::element_count(&shape)? * dtype.size().unwrap_or(1);
    let data = if len == 0 {
        Bytes::new()
    } else {
        let value: DynTensor = value.downcast()?;
        let src = value.data_ptr().cast::<u8>();
        #[allow(unsafe_code)]
        // SAFETY: a CPU tensor of this dtype and shape holds exactly `len` initialized bytes at
        // `src`, valid while `value` lives; they are copied out before it is dropped.
        let slice = unsafe { std::slice::from_raw_parts(src, len) };
        Bytes::copy_from_slice(slice)
    };
    Ok(Tensor::from_raw(dtype, shape, data)?)
}

/// Reads a string tensor's elements as raw bytes (ONNX strings need not be UTF-8, and BYTES
/// carries arbitrary bytes): one copy into a buffer, elements are slices of it.
fn string_elements(value: &DynValue, count: usize) -> Result<Vec<Bytes>, RuntimeError> {
    use ::ort::AsPointer;
    let api = ::ort::api();
    let ptr = value.ptr();
    let mut total = 0usize;
    #[allow(unsafe_code)]
    // SAFETY: `ptr` is a live string tensor owned by `value`; `total` is a valid out-pointer.
    check(unsafe { (api.GetStringTensorDataLength)(ptr, &mut total) })?;
    let mut content = vec![0u8; total];
    let mut offsets = vec![0usize; count];
    if count > 0 {
        #[allow(unsafe_code)]
        // SAFETY: `content` has `total` writable bytes and `offsets` has `count` slots, the
        // sizes ONNX Runtime reported for this tensor.
        check(unsafe {
            (api.GetStringTensorContent)(
                ptr,
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            )
        })?;
    }
    let content = Bytes::from(content);
    let mut elements = Vec::with_capacity(count);
    for i in 0..count {
        let end = offsets.get(i + 1).copied().unwrap_or(total);
        if offsets[i] > end || end > total {
            return Err(RuntimeError::Backend(
                "onnx runtime returned invalid string offsets".into(),
            ));
        }
        elements.push(content.slice(offsets[i]..end));
    }
    Ok(elements)
}

fn check(status: ::ort::sys::OrtStatusPtr) -> Result<(), RuntimeError> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ::ort::api();
    #[allow(unsafe_code)]
    // SAFETY: a non-null status carries a NUL-terminated message; it is released exactly once.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(RuntimeError::Ort(message))
}
