//! Writes a Parquet file for `make bench-batch`: an `id` column and one fixed-size list
//! column of FP32 values in [0, 1) (a fixed pseudo-random sequence), in row groups.
//!
//! usage: batch_input OUT.parquet ROWS COLUMN VALUES_PER_ROW ROWS_PER_GROUP

use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, rows, column, width, group] = &args[..] else {
        return Err(
            "usage: batch_input OUT.parquet ROWS COLUMN VALUES_PER_ROW ROWS_PER_GROUP".into(),
        );
    };
    let (rows, width, group): (usize, usize, usize) =
        (rows.parse()?, width.parse()?, group.parse()?);
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            column,
            DataType::FixedSizeList(Arc::clone(&item), width as i32),
            false,
        ),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(out)?, schema.clone(), Some(props))?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for start in (0..rows).step_by(group) {
        let n = group.min(rows - start);
        let values: Vec<f32> = (0..n * width)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let list = FixedSizeListArray::new(
            Arc::clone(&item),
            width as i32,
            Arc::new(Float32Array::from(values)),
            None,
        );
        let ids = Int64Array::from_iter_values((start..start + n).map(|i| i as i64));
        writer.write(&RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids), Arc::new(list)],
        )?)?;
    }
    writer.close()?;
    Ok(())
}
