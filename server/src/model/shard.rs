//! Splitting one GGUF weight matrix between tensor-parallel ranks, before any fusing.
//!
//! A matrix is stored `[rows = out, cols = in]`, each row a run of quantization blocks (32 or 256 values).
//! - Column-parallel layers (Q, K, V, gate, up) split the **rows**: rank r holds output features
//!   `[r·rows/n, (r+1)·rows/n)`, whole rows, so any type splits as long as n divides the rows (for Q/K/V: the
//!   heads).
//! - Row-parallel layers (attention output, down) split the **columns**: rank r holds input features
//!   `[r·cols/n, (r+1)·cols/n)` of every row, which must be whole blocks: a split that cuts a block is refused.
//!
//! The shard is the same bytes as the original's part, so every rank's numerics are the unsplit matrix's.

use std::borrow::Cow;

use candle_core::Device;
use candle_core::quantized::{QStorage, QTensor};

/// Which dimension of `[out, in]` is divided between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Output features (column-parallel layer).
    Rows,
    /// Input features (row-parallel layer).
    Cols,
}

/// Why a matrix cannot be split `size` ways.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("tensor-parallel size {size} does not divide the {rows} rows of {name} ({rows} % {size} = {})", rows % size)]
    Rows {
        name: String,
        rows: usize,
        size: usize,
    },
    #[error(
        "tensor-parallel size {size} cuts the {dtype} blocks of {name}: {cols} columns / {size} = {} per rank, \
         not a multiple of the {block}-value block",
        *cols as f64 / *size as f64
    )]
    Block {
        name: String,
        dtype: String,
        cols: usize,
        size: usize,
        block: usize,
    },
    #[error("{name}: {0}", name = .1)]
    Candle(String, String),
}

/// Rank `rank`'s part (of `size`) of the `[rows, cols]` matrix `w` named `name`, on `device`.
pub fn shard(
    name: &str,
    w: &QTensor,
    split: Split,
    rank: usize,
    size: usize,
    device: &Device,
) -> Result<QTensor, ShardError> {
    let candle = |e: candle_core::Error| ShardError::Candle(e.to_string(), name.to_owned());
    let (rows, cols) = w.shape().dims2().map_err(candle)?;
    let dtype = w.dtype();
    let (block, block_bytes) = (dtype.block_size(), dtype.type_size());
    let row_bytes = cols / block * block_bytes;
    let data = w.data().map_err(candle)?;
    let (bytes, shape) = match split {
        Split::Rows => {
            if !rows.is_multiple_of(size) {
                return Err(ShardError::Rows {
                    name: name.to_owned(),
                    rows,
                    size,
                });
            }
            let part = rows / size;
            let start = rank * part * row_bytes;
            (data[start..start + part * row_bytes].to_vec(), (part, cols))
        }
        Split::Cols => {
            if !cols.is_multiple_of(size) || !(cols / size).is_multiple_of(block) {
                return Err(ShardError::Block {
                    name: name.to_owned(),
                    dtype: format!("{dtype:?}"),
                    cols,
                    size,
                    block,
                });
            }
            let part = cols / size;
            let part_bytes = part / block * block_bytes;
            let mut out = Vec::with_capacity(rows * part_bytes);
            for row in data.chunks_exact(row_bytes) {
                out.extend_from_slice(&row[rank * part_bytes..(rank + 1) * part_bytes]);
            }
            (out, (rows, part))
        }
    };
    let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype).map_err(candle)?;
    QTensor::new(storage, shape).map_err(candle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{DType, Tensor};

    fn matrix(rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919) % 1000) as f32 - 500.0) / 97.0)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("matrix")
    }

    fn dense(q: &QTensor) -> Vec<Vec<f32>> {
        q.dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec2::<f32>())
            .expect("dequantize")
    }

    #[test]
    fn row_and_column_shards_of_every_type_are_exactly_the_parts_of_the_whole() {
        // Every type the model loader accepts.
        for &dtype in crate::gguf::SUPPORTED_TYPES {
            let (rows, cols) = (12, 1024);
            let w = QTensor::quantize(&matrix(rows, cols), dtype).expect("quantize");
            let whole = dense(&w);
            for size in [1, 2, 4] {
                for rank in 0..size {
                    let r = shard("w", &w, Split::Rows, rank, size, &Device::Cpu).expect("rows");
                    let part = rows / size;
                    assert_eq!(
                        dense(&r),
                        whole[rank * part..(rank + 1) * part],
                        "{dtype:?} rows {rank}/{size}"
                    );
                    let c = shard("w", &w, Split::Cols, rank, size, &Device::Cpu).expect("cols");
                    let part = cols / size;
                    let want: Vec<Vec<f32>> = whole
                        .iter()
                        .map(|row| row[rank * part..(rank + 1) * part].to_vec())
                        .collect();
                    assert_eq!(dense(&c), want, "{dtype:?} cols {rank}/{size}");
                }
            }
        }
    }

    #[test]
    fn a_split_that_cuts_a_block_or_a_row_is_refused_with_the_arithmetic() {
        let q8 = QTensor::quantize(&matrix(9, 96), GgmlDType::Q8_0).expect("q8_0");
        let err = shard(
            "blk.0.ffn_down.weight",
            &q8,
            Split::Cols,
            0,
            2,
            &Device::Cpu,
        )
        .expect_err("48 columns per rank cut a 32-value block");
        assert_eq!(
            err.to_string(),
            "tensor-parallel size 2 cuts the Q8_0 blocks of blk.0.ffn_down.weight: 96 columns / 2 = 48 per \
             rank, not a multiple of the 32-value block"
        );
        let err =
            shard("blk.0.attn_q.weight", &q8, Split::Rows, 0, 2, &Device::Cpu).expect_err("9 rows");
        assert_eq!(
            err.to_string(),
            "tensor-parallel size 2 does not divide the 9 rows of blk.0.attn_q.weight (9 % 2 = 1)"
        );
        assert!(
            shard("x", &q8, Split::Cols, 0, 3, &Device::Cpu).is_ok(),
            "96 / 3 = 32: whole blocks"
        );
    }
}
