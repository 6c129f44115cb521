//! PyTorch state_dicts: the zip format of PyTorch 1.6 and later (read by `candle_core::pickle`)
//! and the legacy format before it (read here): five pickles one after the other (magic number,
//! protocol version, system info, the state_dict whose tensors name their storages by key, the
//! list of storage keys), then each storage in that order as a little-endian u64 element count
//! and its raw little-endian elements.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};

/// The legacy format's first pickle: protocol 2, the 80-bit magic number 0x1950a86a20f9469cfc6c
/// (LONG1, little-endian), STOP. Read as bytes: candle's pickle reader takes integers of at most
/// 64 bits.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// Every tensor of a state_dict file in either format.
pub fn read(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    if head == *b"PK\x03\x04" {
        return candle_core::pickle::read_all(path);
    }
    read_legacy(&mut BufReader::new(std::fs::File::open(path)?))
}

fn pickle<R: BufRead>(r: &mut R) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

fn read_legacy<R: BufRead>(r: &mut R) -> candle_core::Result<Vec<(String, Tensor)>> {
    let bail = |what: &str| candle_core::Error::Msg(format!("not a PyTorch state_dict: {what}"));
    let mut magic = [0u8; LEGACY_MAGIC.len()];
    r.read_exact(&mut magic)?;
    if magic != LEGACY_MAGIC {
        return Err(bail("no legacy magic number"));
    }
    let _protocol = pickle(r)?;
    let _system = pickle(r)?;
    let Object::Dict(entries) = pickle(r)? else {
        return Err(bail("the state_dict is not a dictionary"));
    };
    let keys = match pickle(r)? {
        Object::List(keys) | Object::Tuple(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|_| bail("a storage key is not a string"))
            })
            .collect::<candle_core::Result<Vec<_>>>()?,
        _ => return Err(bail("no storage key list")),
    };
    // Tensors as (name, storage key, dtype, shape, storage order of the dimensions, offset in
    // elements).
    let mut wanted = Vec::new();
    for (name, value) in entries {
        let Some(info) = value.into_tensor_info(name, Path::new(""))? else {
            continue;
        };
        let key = info.path.trim_start_matches('/').to_owned();
        let offset = info.layout.start_offset() / info.dtype.size_in_bytes();
        let order = storage_order(info.layout.dims(), info.layout.stride())
            .ok_or_else(|| bail(&format!("tensor {} has a layout with gaps", info.name)))?;
        wanted.push((
            info.name,
            key,
            info.dtype,
            info.layout.dims().to_vec(),
            order,
            offset,
        ));
    }
    let mut storages: HashMap<String, (candle_core::DType, Vec<u8>)> = HashMap::new();
    for key in keys {
        let mut count = [0u8; 8];
        r.read_exact(&mut count)?;
        let count = u64::from_le_bytes(count) as usize;
        let dtype = wanted
            .iter()
            .find(|w| w.1 == key)
            .map(|w| w.2)
            .ok_or_else(|| bail(&format!("storage {key} belongs to no tensor")))?;
        let mut bytes = vec![0u8; count * dtype.size_in_bytes()];
        r.read_exact(&mut bytes)?;
        storages.insert(key, (dtype, bytes));
    }
    wanted
        .into_iter()
        .map(|(name, key, dtype, shape, order, offset)| {
            let (_, bytes) = storages
                .get(&key)
                .ok_or_else(|| bail(&format!("tensor {name}: no storage {key}")))?;
            let size = dtype.size_in_bytes();
            let start = offset * size;
            let end = start + shape.iter().product::<usize>() * size;
            let raw = bytes
                .get(start..end)
                .ok_or_else(|| bail(&format!("tensor {name} runs past its storage")))?;
            // Read in storage order, then put the dimensions back (a transposed weight).
            let stored: Vec<usize> = order.iter().map(|&d| shape[d]).collect();
            let t = Tensor::from_raw_buffer(raw, dtype, &stored, &Device::Cpu)?;
            let mut back = vec![0; order.len()];
            for (i, &d) in order.iter().enumerate() {
                back[d] = i;
            }
            Ok((name, t.permute(back)?.contiguous()?))
        })
        .collect()
}

/// The dimensions from outermost to innermost in memory, when `stride` lays `dims` out densely
/// (contiguous up to a permutation); `None` for a layout with gaps or overlaps.
fn storage_order(dims: &[usize], stride: &[usize]) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..dims.len()).collect();
    order.sort_by_key(|&d| std::cmp::Reverse((stride[d], dims[d])));
    let mut expected = 1;
    for &d in order.iter().rev() {
        if dims[d] != 1 && stride[d] != expected {
            return None;
        }
        expected *= dims[d];
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::storage_order;

    #[test]
    fn storage_order_of_dense_layouts() {
        assert_eq!(storage_order(&[2, 3], &[3, 1]), Some(vec![0, 1]));
        assert_eq!(storage_order(&[2, 3], &[1, 2]), Some(vec![1, 0]));
        assert_eq!(
            storage_order(&[4, 1, 3, 3], &[9, 9, 3, 1]),
            Some(vec![0, 1, 2, 3])
        );
        assert_eq!(storage_order(&[2, 3], &[4, 1]), None);
    }
}
