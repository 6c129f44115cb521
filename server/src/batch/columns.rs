//! Arrow columns to a model's input tensors, row by row (a row that does not fit is rejected
//! with its reason), and output tensors back to Arrow columns.

use std::sync::Arc;

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, FixedSizeListArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType as ArrowType, Field, Schema};
use bytes::Bytes;
use infergate_runtime::{DataType, Tensor, TensorData, TensorSpec};

/// Which columns feed a signature input: one column (a list per row, or a scalar), or one
/// column per feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub input: String,
    pub columns: Vec<String>,
}

/// `--columns input=col,other=prefix_*`: pairs separated by commas; a column name ending in
/// `*` stands for every column with that prefix, in the file's order (one per feature).
pub fn parse_bindings(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (input, column) = pair
                .split_once('=')
                .ok_or_else(|| format!("--columns: '{pair}' is not input=column"))?;
            let (input, column) = (input.trim(), column.trim());
            if input.is_empty() || column.is_empty() {
                return Err(format!("--columns: '{pair}' is not input=column"));
            }
            Ok((input.to_string(), column.to_string()))
        })
        .collect()
}

/// Binds every signature input to columns of `schema`: as `--columns` says, else the column
/// named like the input, else (a single input) every column but the id columns, one per feature.
pub fn bind(
    inputs: &[TensorSpec],
    schema: &Schema,
    asked: &[(String, String)],
    id_columns: &[&str],
) -> Result<Vec<Binding>, String> {
    if let Some((input, _)) = asked
        .iter()
        .find(|(i, _)| !inputs.iter().any(|s| &s.name == i))
    {
        let known: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "--columns names input '{input}', which the model does not have (inputs: {})",
            known.join(", ")
        ));
    }
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    inputs
        .iter()
        .map(|spec| {
            let columns: Vec<String> = match asked.iter().find(|(i, _)| i == &spec.name) {
                Some((_, column)) => match column.strip_suffix('*') {
                    Some(prefix) => names
                        .iter()
                        .filter(|n| n.starts_with(prefix))
                        .map(|n| n.to_string())
                        .collect(),
                    None => vec![column.clone()],
                },
                None if names.contains(&spec.name.as_str()) => vec![spec.name.clone()],
                None if inputs.len() == 1 => names
                    .iter()
                    .filter(|n| !id_columns.contains(n))
                    .map(|n| n.to_string())
                    .collect(),
                None => {
                    return Err(format!(
                        "no column for input '{}': name one with --columns {}=COLUMN",
                        spec.name, spec.name
                    ));
                }
            };
            if columns.is_empty() {
                return Err(format!("no column matches input '{}'", spec.name));
            }
            if let Some(missing) = columns.iter().find(|c| !names.contains(&c.as_str())) {
                return Err(format!(
                    "input '{}': the input has no column '{missing}' (columns: {})",
                    spec.name,
                    names.join(", ")
                ));
            }
            Ok(Binding {
                input: spec.name.clone(),
                columns,
            })
        })
        .collect()
}

/// The Arrow type a tensor datatype is read as and written from.
fn arrow_type(dtype: DataType) -> Option<ArrowType> {
    Some(match dtype {
        DataType::Bool => ArrowType::Boolean,
        DataType::Uint8 => ArrowType::UInt8,
        DataType::Uint16 => ArrowType::UInt16,
        DataType::Uint32 => ArrowType::UInt32,
        DataType::Uint64 => ArrowType::UInt64,
        DataType::Int8 => ArrowType::Int8,
        DataType::Int16 => ArrowType::Int16,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Fp16 => ArrowType::Float16,
        DataType::Fp32 => ArrowType::Float32,
        DataType::Fp64 => ArrowType::Float64,
        DataType::Bf16 | DataType::Bytes => return None,
    })
}

/// Numbers of one Arrow array, already cast to the input's type.
struct Flat {
    data: ArrayData,
    width: usize,
    bool: bool,
}

impl Flat {
    fn new(array: &ArrayRef, dtype: DataType) -> Result<Self, String> {
        let target = arrow_type(dtype).ok_or_else(|| format!("{dtype:?} inputs are not read"))?;
        let cast = arrow::compute::cast(array, &target).map_err(|e| e.to_string())?;
        Ok(Self {
            width: dtype.size().unwrap_or(1),
            bool: dtype == DataType::Bool,
            data: cast.to_data(),
        })
    }

    fn is_null(&self, i: usize) -> bool {
        self.data.is_null(i)
    }

    fn append(&self, i: usize, out: &mut Vec<u8>) {
        self.append_range(i, 1, out);
    }

    /// Elements `start..start + len`, as little-endian bytes (a list row is one copy).
    fn append_range(&self, start: usize, len: usize, out: &mut Vec<u8>) {
        let buffer = self.data.buffers()[0].as_slice();
        if self.bool {
            for bit in self.data.offset() + start..self.data.offset() + start + len {
                out.push((buffer[bit / 8] >> (bit % 8)) & 1);
            }
        } else {
            let from = (self.data.offset() + start) * self.width;
            out.extend_from_slice(&buffer[from..from + len * self.width]);
        }
    }
}

enum Values {
    /// A list (or fixed-size list) per row: row r's elements are `flat[start..start + len]`.
    List {
        rows: Vec<Option<(usize, usize)>>,
        flat: Flat,
    },
    /// One column per element of the row (a scalar column when the row holds one number).
    Features(Vec<Flat>),
    /// BYTES: a string or binary column, one element per row.
    Bytes(Vec<Option<Bytes>>),
}

/// One signature input's values for the rows of a chunk.
pub struct InputValues {
    pub name: String,
    dtype: DataType,
    /// Shape of one row (no batch dimension when the model batches).
    pub row_shape: Vec<i64>,
    per_row: usize,
    values: Values,
}

/// The shape one row of `spec` takes: its dimensions after the batch dimension when the model
/// batches, else all of them; every one must be fixed.
pub fn row_shape(spec: &TensorSpec, batched: bool) -> Result<Vec<i64>, String> {
    let dims = if batched {
        spec.shape.get(1..).unwrap_or_default().to_vec()
    } else {
        spec.shape.clone()
    };
    if dims.iter().any(|&d| d < 0) {
        return Err(format!(
            "input '{}' has shape {:?}: a row of infergate batch must have a fixed shape",
            spec.name, spec.shape
        ));
    }
    Ok(dims)
}

impl InputValues {
    /// Reads `binding`'s columns of `batch` for `spec`.
    pub fn read(
        batch: &RecordBatch,
        binding: &Binding,
        spec: &TensorSpec,
        row_shape: Vec<i64>,
    ) -> Result<Self, String> {
        let per_row = row_shape.iter().product::<i64>() as usize;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("no column '{name}'"))
        };
        let values = if spec.dtype == DataType::Bytes {
            let [name] = &binding.columns[..] else {
                return Err(format!("BYTES input '{}' reads one column", spec.name));
            };
            if per_row != 1 {
                return Err(format!(
                    "BYTES input '{}' has {per_row} elements a row; infergate batch reads one",
                    spec.name
                ));
            }
            Values::Bytes(bytes_column(&column(name)?, name)?)
        } else if binding.columns.len() > 1 {
            if binding.columns.len() != per_row {
                return Err(format!(
                    "input '{}' takes {per_row} values a row, and {} columns are bound to it",
                    spec.name,
                    binding.columns.len()
                ));
            }
            let flats = binding
                .columns
                .iter()
                .map(|c| {
                    Flat::new(&column(c)?, spec.dtype).map_err(|e| format!("column '{c}': {e}"))
                })
                .collect::<Result<_, _>>()?;
            Values::Features(flats)
        } else {
            let name = &binding.columns[0];
            let array = column(name)?;
            match array.data_type() {
                ArrowType::List(_) | ArrowType::LargeList(_) | ArrowType::FixedSizeList(..) => {
                    let (rows, values) = list_rows(&array);
                    let flat = Flat::new(&values, spec.dtype)
                        .map_err(|e| format!("column '{name}': {e}"))?;
                    Values::List { rows, flat }
                }
                _ if per_row == 1 => Values::Features(vec![
                    Flat::new(&array, spec.dtype).map_err(|e| format!("column '{name}': {e}"))?,
                ]),
                other => {
                    return Err(format!(
                        "input '{}' takes {per_row} values a row, and column '{name}' holds one {other}",
                        spec.name
                    ));
                }
            }
        };
        Ok(Self {
            name: spec.name.clone(),
            dtype: spec.dtype,
            row_shape,
            per_row,
            values,
        })
    }

    /// Why row `r` cannot feed this input, if it cannot.
    pub fn row_error(&self, r: usize) -> Option<String> {
        let name = &self.name;
        match &self.values {
            Values::List { rows, flat } => match rows[r] {
                None => Some(format!("input '{name}' is null")),
                Some((_, len)) if len != self.per_row => Some(format!(
                    "input '{name}' has {len} values, the model takes {}",
                    self.per_row
                )),
                Some((start, len)) => (start..start + len)
                    .position(|i| flat.is_null(i))
                    .map(|e| format!("input '{name}' value {e} is null or not a number")),
            },
            Values::Features(flats) => flats
                .iter()
                .position(|f| f.is_null(r))
                .map(|e| format!("input '{name}' value {e} is null or not a number")),
            Values::Bytes(rows) => rows[r].is_none().then(|| format!("input '{name}' is null")),
        }
    }

    /// The tensor of `rows` (each passed [`InputValues::row_error`]), batched along a first
    /// dimension when `batched`.
    pub fn tensor(&self, rows: &[usize], batched: bool) -> Tensor {
        let mut shape = self.row_shape.clone();
        if batched {
            shape.insert(0, rows.len() as i64);
        }
        if let Values::Bytes(elements) = &self.values {
            let elements = rows
                .iter()
                .map(|&r| elements[r].clone().unwrap_or_default());
            return Tensor::from_elements(shape, elements.collect()).expect("one element a row");
        }
        let mut raw =
            Vec::with_capacity(rows.len() * self.per_row * self.dtype.size().unwrap_or(1));
        for &r in rows {
            match &self.values {
                Values::List { rows, flat } => {
                    let (start, len) = rows[r].expect("checked");
                    flat.append_range(start, len, &mut raw);
                }
                Values::Features(flats) => flats.iter().for_each(|f| f.append(r, &mut raw)),
                Values::Bytes(_) => unreachable!(),
            }
        }
        Tensor::from_raw(self.dtype, shape, Bytes::from(raw)).expect("sized from the shape")
    }
}

/// Row spans of a list column, and its values.
fn list_rows(array: &ArrayRef) -> (Vec<Option<(usize, usize)>>, ArrayRef) {
    fn spans<O: arrow::array::OffsetSizeTrait>(
        list: &arrow::array::GenericListArray<O>,
    ) -> (Vec<Option<(usize, usize)>>, ArrayRef) {
        let offsets = list.value_offsets();
        let rows = (0..list.len())
            .map(|r| {
                let (start, end) = (offsets[r].as_usize(), offsets[r + 1].as_usize());
                list.is_valid(r).then_some((start, end - start))
            })
            .collect();
        (rows, Arc::clone(list.values()))
    }
    match array.data_type() {
        ArrowType::List(_) => spans(array.as_list::<i32>()),
        ArrowType::LargeList(_) => spans(array.as_list::<i64>()),
        _ => {
            let list = array.as_fixed_size_list();
            let size = list.value_length() as usize;
            let base = list.offset() * size;
            let rows = (0..list.len())
                .map(|r| list.is_valid(r).then_some((base + r * size, size)))
                .collect();
            (rows, Arc::clone(list.values()))
        }
    }
}

fn bytes_column(array: &ArrayRef, name: &str) -> Result<Vec<Option<Bytes>>, String> {
    fn rows<'a>(array: &'a ArrayRef, get: &dyn Fn(usize) -> &'a [u8]) -> Vec<Option<Bytes>> {
        (0..array.len())
            .map(|r| array.is_valid(r).then(|| Bytes::copy_from_slice(get(r))))
            .collect()
    }
    Ok(match array.data_type() {
        ArrowType::Utf8 => rows(array, &|r| array.as_string::<i32>().value(r).as_bytes()),
        ArrowType::LargeUtf8 => rows(array, &|r| array.as_string::<i64>().value(r).as_bytes()),
        ArrowType::Utf8View => rows(array, &|r| array.as_string_view().value(r).as_bytes()),
        ArrowType::Binary => rows(array, &|r| array.as_binary::<i32>().value(r)),
        ArrowType::LargeBinary => rows(array, &|r| array.as_binary::<i64>().value(r)),
        ArrowType::BinaryView => rows(array, &|r| array.as_binary_view().value(r)),
        other => return Err(format!("column '{name}' holds {other}, not text or bytes")),
    })
}

/// Output tensors of the requests of a chunk, gathered row by row.
pub struct OutputValues {
    name: String,
    dtype: DataType,
    row_shape: Option<Vec<i64>>,
    raw: Vec<u8>,
    elements: Vec<Bytes>,
    rows: usize,
}

impl OutputValues {
    pub fn new(name: &str, dtype: DataType) -> Self {
        Self {
            name: name.to_string(),
            dtype,
            row_shape: None,
            raw: Vec::new(),
            elements: Vec::new(),
            rows: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends the output of one request of `rows` rows.
    pub fn push(&mut self, tensor: &Tensor, rows: usize, batched: bool) -> Result<(), String> {
        let shape = tensor.shape();
        let row_shape = if batched {
            if shape.first().copied() != Some(rows as i64) {
                return Err(format!(
                    "output '{}' has shape {shape:?} for {rows} rows",
                    self.name
                ));
            }
            shape[1..].to_vec()
        } else {
            shape.to_vec()
        };
        match &self.row_shape {
            Some(known) if known != &row_shape => {
                return Err(format!(
                    "output '{}' changed shape from {known:?} to {row_shape:?} a row",
                    self.name
                ));
            }
            _ => self.row_shape = Some(row_shape),
        }
        match tensor.data() {
            TensorData::Fixed(raw) => self.raw.extend_from_slice(raw),
            TensorData::Bytes(elements) => self.elements.extend(elements.iter().cloned()),
        }
        self.rows += rows;
        Ok(())
    }

    /// The Arrow column (a scalar column for one value a row, else a fixed-size list) and its
    /// field, with the row shape in the field's metadata (`infergate.shape`).
    pub fn finish(self) -> Result<(Field, ArrayRef), String> {
        let row_shape = self.row_shape.unwrap_or_default();
        let per_row = row_shape.iter().product::<i64>().max(0) as usize;
        let n = self.rows * per_row;
        let values: ArrayRef = match self.dtype {
            DataType::Bytes => {
                if self.elements.iter().all(|e| std::str::from_utf8(e).is_ok()) {
                    Arc::new(arrow::array::StringArray::from_iter_values(
                        self.elements
                            .iter()
                            .map(|e| std::str::from_utf8(e).expect("checked")),
                    ))
                } else {
                    Arc::new(arrow::array::BinaryArray::from_iter_values(
                        self.elements.iter(),
                    ))
                }
            }
            DataType::Bf16 => Arc::new(arrow::array::Float32Array::from_iter_values(
                self.raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            )),
            DataType::Bool => Arc::new(arrow::array::BooleanArray::from_iter(
                self.raw.iter().map(|&b| Some(b != 0)),
            )),
            dtype => {
                let data = ArrayData::builder(arrow_type(dtype).expect("fixed-size type"))
                    .len(n)
                    .add_buffer(Buffer::from_vec(self.raw))
                    .align_buffers(true)
                    .build()
                    .map_err(|e| format!("output '{}': {e}", self.name))?;
                arrow::array::make_array(data)
            }
        };
        let shape = serde_json::to_string(&row_shape).expect("integers");
        let metadata: std::collections::HashMap<String, String> =
            [("infergate.shape".to_string(), shape)].into();
        if row_shape.is_empty() {
            let field = Field::new(&self.name, values.data_type().clone(), false);
            return Ok((field.with_metadata(metadata), values));
        }
        let item = Arc::new(Field::new("item", values.data_type().clone(), false));
        let list = FixedSizeListArray::try_new(Arc::clone(&item), per_row as i32, values, None)
            .map_err(|e| format!("output '{}': {e}", self.name))?;
        let field = Field::new(&self.name, list.data_type().clone(), false);
        Ok((field.with_metadata(metadata), Arc::new(list)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Float64Type;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.to_vec::<f32>().unwrap()
    }

    #[test]
    fn list_rows_feed_a_batched_input_and_bad_rows_say_why() {
        let list = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(3.0)]),
            None,
            Some(vec![Some(5.0), None]),
            Some(vec![Some(7.0), Some(8.0)]),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "x",
            list.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(list)]).unwrap();
        let spec = spec("x", DataType::Fp32, &[-1, 2]);
        let bindings = bind(std::slice::from_ref(&spec), &schema, &[], &[]).unwrap();
        let values =
            InputValues::read(&batch, &bindings[0], &spec, row_shape(&spec, true).unwrap())
                .unwrap();
        let errors: Vec<_> = (0..5).map(|r| values.row_error(r)).collect();
        assert_eq!(errors[0], None);
        assert_eq!(
            errors[1].as_deref(),
            Some("input 'x' has 1 values, the model takes 2")
        );
        assert_eq!(errors[2].as_deref(), Some("input 'x' is null"));
        assert_eq!(
            errors[3].as_deref(),
            Some("input 'x' value 1 is null or not a number")
        );
        let t = values.tensor(&[0, 4], true);
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(f32s(&t), [1.0, 2.0, 7.0, 8.0]);
    }

    #[test]
    fn one_column_per_feature_by_prefix_in_file_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("f_b", ArrowType::Float64, true),
            Field::new("f_a", ArrowType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![10, 11])),
                Arc::new(Float64Array::from(vec![Some(0.5), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let spec = spec("input", DataType::Fp32, &[-1, 2]);
        let asked = parse_bindings("input=f_*").unwrap();
        let bindings = bind(std::slice::from_ref(&spec), &schema, &asked, &["id"]).unwrap();
        assert_eq!(bindings[0].columns, ["f_b", "f_a"]);
        // Without --columns, the one input takes every column but the id.
        let default = bind(std::slice::from_ref(&spec), &schema, &[], &["id"]).unwrap();
        assert_eq!(default[0].columns, ["f_b", "f_a"]);
        let values = InputValues::read(&batch, &bindings[0], &spec, vec![2]).unwrap();
        assert_eq!(values.row_error(0), None);
        assert_eq!(
            values.row_error(1).as_deref(),
            Some("input 'input' value 0 is null or not a number")
        );
        assert_eq!(f32s(&values.tensor(&[0], true)), [0.5, 1.0]);
        let err = bind(
            std::slice::from_ref(&spec),
            &schema,
            &parse_bindings("input=nope").unwrap(),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("no column 'nope'"), "{err}");
        let err = bind(&[spec], &schema, &parse_bindings("other=id").unwrap(), &[]).unwrap_err();
        assert!(err.contains("does not have"), "{err}");
    }

    #[test]
    fn text_rows_become_bytes_elements_and_outputs_fixed_size_lists() {
        let schema = Arc::new(Schema::new(vec![Field::new("text", ArrowType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![Some("a b"), None]))],
        )
        .unwrap();
        let spec = spec("text", DataType::Bytes, &[-1]);
        let bindings = bind(std::slice::from_ref(&spec), &schema, &[], &[]).unwrap();
        let values = InputValues::read(&batch, &bindings[0], &spec, vec![]).unwrap();
        assert_eq!(values.row_error(1).as_deref(), Some("input 'text' is null"));
        let t = values.tensor(&[0], true);
        assert_eq!(t.shape(), &[1]);

        let mut out = OutputValues::new("embedding", DataType::Fp32);
        let first = Tensor::from_slice(vec![2, 3], &[1f32, 2., 3., 4., 5., 6.]).unwrap();
        out.push(&first, 2, true).unwrap();
        let second = Tensor::from_slice(vec![1, 3], &[7f32, 8., 9.]).unwrap();
        out.push(&second, 1, true).unwrap();
        let wrong = Tensor::from_slice(vec![1, 2], &[7f32, 8.]).unwrap();
        assert!(
            out.push(&wrong, 1, true)
                .unwrap_err()
                .contains("changed shape")
        );
        let (field, column) = out.finish().unwrap();
        assert_eq!(field.metadata()["infergate.shape"], "[3]");
        let list = column.as_fixed_size_list();
        assert_eq!(list.len(), 3);
        let row = list.value(2);
        let row = row.as_primitive::<arrow::datatypes::Float32Type>();
        assert_eq!(row.values().to_vec(), [7.0, 8.0, 9.0]);
    }
}
