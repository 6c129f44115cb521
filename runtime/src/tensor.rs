//! Tensors of every KServe V2 datatype, stored as little-endian bytes shared with the wire
//! buffer they came from (`Bytes`), so decoding never copies element data.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[cfg(not(target_endian = "little"))]
compile_error!("infergate stores tensors in native order and requires a little-endian target");

/// A KServe V2 tensor datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    /// Every datatype, in protocol order.
    pub const ALL: [DataType; 14] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Bf16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    /// The protocol name, e.g. `FP32`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Bf16 => "BF16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Parses a protocol name (exact, upper case as on the wire).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element, `None` for variable-length BYTES.
    pub const fn size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => Some(1),
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => Some(2),
            Self::Uint32 | Self::Int32 | Self::Fp32 => Some(4),
            Self::Uint64 | Self::Int64 | Self::Fp64 => Some(8),
            Self::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why raw data does not make a tensor. Messages are completed with the input name by callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {0:?} has a negative dimension")]
    NegativeDim(Vec<i64>),
    #[error("shape {0:?} has too many elements")]
    TooLarge(Vec<i64>),
    #[error("expected {expected} bytes of {dtype} data for shape {shape:?}, got {actual}")]
    ByteLength {
        dtype: DataType,
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("expected {expected} elements for shape {shape:?}, got {actual}")]
    ElementCount {
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("malformed BYTES data: element {index} {problem}")]
    BadBytes { index: usize, problem: &'static str },
}

/// Number of elements of a concrete shape, with overflow and negative dimensions refused.
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| TensorError::NegativeDim(shape.to_vec()))?;
        acc.checked_mul(d)
            .ok_or_else(|| TensorError::TooLarge(shape.to_vec()))
    })
}

/// Element storage.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements: little-endian, row-major, no padding (BOOL is one byte).
    Fixed(Bytes),
    /// BYTES elements, each a slice of the buffer it arrived in.
    Bytes(Vec<Bytes>),
}

/// A typed, shaped tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<i64>,
    data: TensorData,
}

/// Rust element types with a fixed-size V2 datatype.
pub trait Element: bytemuck::Pod {
    /// The matching datatype.
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DataType = DataType::$d; })* };
}
element!(u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8, i16 => Int16,
    i32 => Int32, i64 => Int64, half::f16 => Fp16, half::bf16 => Bf16, f32 => Fp32, f64 => Fp64);

impl Tensor {
    /// Wraps raw wire data: fixed-size elements as they are, BYTES as 4-byte little-endian
    /// length prefixes each followed by the element. Checks that the length matches the shape.
    pub fn from_raw(dtype: DataType, shape: Vec<i64>, data: Bytes) -> Result<Self, TensorError> {
        let count = element_count(&shape)?;
        match dtype.size() {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
                if data.len() != expected {
                    return Err(TensorError::ByteLength {
                        dtype,
                        shape,
                        expected,
                        actual: data.len(),
                    });
                }
                Ok(Self {
                    dtype,
                    shape,
                    data: TensorData::Fixed(data),
                })
            }
            None => {
                let elements = split_bytes_elements(data, count)?;
                Ok(Self {
                    dtype,
                    shape,
                    data: TensorData::Bytes(elements),
                })
            }
        }
    }

    /// A BYTES tensor from its elements.
    pub fn from_elements(shape: Vec<i64>, elements: Vec<Bytes>) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?;
        if elements.len() != expected {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                actual: elements.len(),
            });
        }
        Ok(Self {
            dtype: DataType::Bytes,
            shape,
            data: TensorData::Bytes(elements),
        })
    }

    /// A fixed-size tensor copied from a typed slice.
    pub fn from_slice<T: Element>(shape: Vec<i64>, values: &[T]) -> Result<Self, TensorError> {
        Self::from_raw(
            T::DTYPE,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(values)),
        )
    }

    /// A BOOL tensor.
    pub fn from_bools(shape: Vec<i64>, values: &[bool]) -> Result<Self, TensorError> {
        let raw: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        Self::from_raw(DataType::Bool, shape, Bytes::from(raw))
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Number of elements (the shape was checked when the tensor was built).
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len() / self.dtype.size().unwrap_or(1),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the raw wire form in bytes.
    pub fn raw_len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        }
    }

    /// The raw wire form: shared (no copy) for fixed-size data, length-prefixed for BYTES.
    pub fn to_raw(&self) -> Bytes {
        match &self.data {
            TensorData::Fixed(b) => b.clone(),
            TensorData::Bytes(v) => {
                let mut out = BytesMut::with_capacity(self.raw_len());
                for element in v {
                    out.put_u32_le(element.len() as u32);
                    out.put_slice(element);
                }
                out.freeze()
            }
        }
    }

    /// Index of the first NaN or infinite element of a floating-point tensor (none for other
    /// datatypes). Reads the raw bits, so it needs no aligned copy.
    pub fn first_non_finite(&self) -> Option<usize> {
        let TensorData::Fixed(b) = &self.data else {
            return None;
        };
        // An IEEE value is NaN or infinite exactly when its exponent bits are all ones.
        let half = |mask: u16| {
            b.chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) & mask == mask)
        };
        match self.dtype {
            DataType::Fp16 => half(0x7C00),
            DataType::Bf16 => half(0x7F80),
            DataType::Fp32 => b
                .chunks_exact(4)
                .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
            DataType::Fp64 => b
                .chunks_exact(8)
                .position(|c| !f64::from_le_bytes(c.try_into().expect("8 bytes")).is_finite()),
            _ => None,
        }
    }

    /// The elements decoded into `T` (works whatever the buffer's alignment).
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        match &self.data {
            TensorData::Fixed(b) if T::DTYPE == self.dtype => Some(
                b.chunks_exact(std::mem::size_of::<T>())
                    .map(bytemuck::pod_read_unaligned)
                    .collect(),
            ),
            _ => None,
        }
    }
}

fn split_bytes_elements(mut data: Bytes, count: usize) -> Result<Vec<Bytes>, TensorError> {
    // Every element needs at least its 4-byte prefix: refuse absurd counts before allocating.
    if count > data.len() / 4 {
        return Err(TensorError::BadBytes {
            index: data.len() / 4,
            problem: "is missing (data shorter than the shape requires)",
        });
    }
    let mut elements = Vec::with_capacity(count);
    for index in 0..count {
        if data.remaining() < 4 {
            return Err(TensorError::BadBytes {
                index,
                problem: "is missing its 4-byte length prefix",
            });
        }
        let len = data.get_u32_le() as usize;
        if data.remaining() < len {
            return Err(TensorError::BadBytes {
                index,
                problem: "is longer than the remaining data",
            });
        }
        elements.push(data.split_to(len));
    }
    if data.has_remaining() {
        return Err(TensorError::BadBytes {
            index: count,
            problem: "is extra data beyond the shape's element count",
        });
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn non_finite_elements_are_found_in_every_float_type() {
        use half::{bf16, f16};
        let f32s = Tensor::from_slice(vec![3], &[1.0f32, f32::NAN, 2.0]).unwrap();
        assert_eq!(f32s.first_non_finite(), Some(1));
        let f64s = Tensor::from_slice(vec![2], &[0.5f64, f64::NEG_INFINITY]).unwrap();
        assert_eq!(f64s.first_non_finite(), Some(1));
        let halfs = Tensor::from_slice(vec![3], &[f16::ONE, f16::MAX, f16::INFINITY]).unwrap();
        assert_eq!(halfs.first_non_finite(), Some(2));
        let bf16s = Tensor::from_slice(vec![2], &[bf16::NAN, bf16::ONE]).unwrap();
        assert_eq!(bf16s.first_non_finite(), Some(0));
        let finite = Tensor::from_slice(vec![2], &[f32::MAX, f32::MIN_POSITIVE]).unwrap();
        assert_eq!(finite.first_non_finite(), None);
        // Integers have no NaN: 0xFFFFFFFF is just -1.
        let ints = Tensor::from_slice(vec![1], &[-1i32]).unwrap();
        assert_eq!(ints.first_non_finite(), None);
    }

    #[test]
    fn element_count_refuses_negative_and_overflow() {
        assert_eq!(element_count(&[2, 3]), Ok(6));
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(element_count(&[0, 5]), Ok(0));
        assert!(matches!(
            element_count(&[2, -1]),
            Err(TensorError::NegativeDim(_))
        ));
        assert!(matches!(
            element_count(&[i64::MAX, i64::MAX]),
            Err(TensorError::TooLarge(_))
        ));
    }

    #[test]
    fn fixed_size_length_must_match_shape() {
        let ok = Tensor::from_raw(DataType::Fp32, vec![2], Bytes::from(vec![0u8; 8])).unwrap();
        assert_eq!(ok.len(), 2);
        let err = Tensor::from_raw(DataType::Fp32, vec![2], Bytes::from(vec![0u8; 7])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected 8 bytes of FP32 data for shape [2], got 7"
        );
    }

    #[test]
    fn bytes_elements_parse_and_serialize_back() {
        let t = Tensor::from_elements(vec![2], vec![Bytes::from("ab"), Bytes::from("")]).unwrap();
        let raw = t.to_raw();
        assert_eq!(&raw[..], b"\x02\x00\x00\x00ab\x00\x00\x00\x00");
        assert_eq!(Tensor::from_raw(DataType::Bytes, vec![2], raw).unwrap(), t);
    }

    #[test]
    fn bytes_elements_with_lying_lengths_are_refused() {
        let cases: [(&[u8], i64, &str); 4] = [
            (
                b"\x05\x00\x00\x00ab",
                1,
                "element 0 is longer than the remaining data",
            ),
            (b"\x01\x00", 1, "element 0 is missing"),
            (b"\x01\x00\x00\x00ab", 1, "element 1 is extra data"),
            (b"", 1_000_000_000, "is missing"),
        ];
        for (raw, n, fragment) in cases {
            let err =
                Tensor::from_raw(DataType::Bytes, vec![n], Bytes::from_static(raw)).unwrap_err();
            assert!(err.to_string().contains(fragment), "{err} lacks {fragment}");
        }
    }

    #[test]
    fn typed_access_is_alignment_independent() {
        let mut raw = vec![0u8; 9];
        raw[1..].copy_from_slice(bytemuck::cast_slice(&[1.5f32, -2.0]));
        let unaligned = Bytes::from(raw).slice(1..);
        let t = Tensor::from_raw(DataType::Fp32, vec![2], unaligned).unwrap();
        assert_eq!(t.to_vec::<f32>(), Some(vec![1.5, -2.0]));
        assert_eq!(t.to_vec::<i32>(), None);
    }
}
