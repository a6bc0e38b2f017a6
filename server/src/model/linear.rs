//! Linear layers over dense or quantized weights.
//!
//! A [`Linear`] computes `x · Wᵀ` for `x: [tokens, in]` and a weight stored `[out, in]` (GGUF `ne = [in, out]`).
//! Weights that share an input (Q/K/V, gate/up) are fused into one matrix at load by stacking rows
//! ([`Linear::fused`]); for quantized weights of one type that is a byte concatenation, because GGUF blocks run
//! along a row.
//!
//! Tensor parallelism slots in as more variants (column-parallel: split the rows; row-parallel: split the
//! columns and all-reduce) without touching the model's `forward`.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use super::kernels::{
    HalfMatrix, HalfType, KernelMatrix, Q4_0Matrix, Q4_1Matrix, Q4KMatrix, Q5_0Matrix, Q5_1Matrix,
    Q5KMatrix, Q5Matrix, Q6Matrix, Q8_0Matrix,
};

/// Options applied while turning GGUF tensors into layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Re-encode Q4_1 weights as Q8_0 at load (an experiment kept for benchmarks). Off by default: on the
    /// CPU Q4_1 runs on our own exact AVX2 kernel ([`super::kernels`]), while the re-encoding rounds every
    /// weight again (to 1/254 of its block's maximum) and measurably moved greedy text off llama.cpp's.
    pub repack_q4_1: bool,
    /// With tensor parallelism, keep the whole LM head on every rank instead of splitting the vocabulary
    /// (measured against the vocab-parallel default by `bench --replicate-lm-head`).
    pub replicate_lm_head: bool,
    /// BF16 weights on the CPU multiply f32 activations even where AVX-512 BF16 could take bf16-rounded
    /// ones (the faster default, llama.cpp's numerics): see [`super::kernels::HalfMatrix`].
    pub exact_bf16: bool,
    /// Q6_K weights on candle's own kernels (its dot for one token, its repacked tiles for more) instead of
    /// ours: for side-by-side benchmarks only (`bench --candle-q6k`). candle's two paths round differently,
    /// so a token's logits then depend on how many tokens share its step.
    pub candle_q6k: bool,
    /// Q4_K weights on the Q4_1 kernel (re-laid out) even where their own runs: for side-by-side
    /// benchmarks only (`bench --q4k-as-q4-1`).
    pub q4k_as_q4_1: bool,
}

/// A weight matrix `[out, in]` and how it is multiplied.
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense f32 matrix (F32 GGUF tensors; F16/BF16 ones of mixed types or odd widths on the CPU, widened at
    /// load).
    Dense(Tensor),
    /// An F16 or BF16 matrix on the CPU, kept in its own precision (the file's bytes) and multiplied by our
    /// own register-blocked kernel with f32 activations and accumulation (see [`super::kernels`]).
    Half(HalfMatrix),
    /// A dense F16 or BF16 matrix kept in its own precision on a GPU (half the memory and bandwidth of f32):
    /// activations are rounded to it for the matmul, which accumulates in f32 (cuBLAS), and come back as f32.
    DenseHalf(Tensor),
    /// A block-quantized matrix, multiplied by candle's quantized kernels.
    Quantized(QMatMul),
    /// A block-quantized matrix on the CPU multiplied by one of our own multi-token kernels, with llama.cpp's
    /// activation quantization and exact integer dots (see [`super::kernels`]): Q8_0, Q4_1, and Q4_K, Q5_0,
    /// Q5_1, Q5_K and Q6_K (at the file's size on AVX2 and AVX-512 VNNI CPUs, re-laid out exactly onto the
    /// Q4_1, Q8_0 or 5-bit kernel elsewhere).
    Kernel(Arc<dyn KernelMatrix>),
    /// A Q4_0 matrix on the CPU (Q8_0 activations; our tiles on AVX2 and VNNI CPUs, candle's SIMD dot on
    /// rayon rows elsewhere).
    Q4_0(Q4_0Matrix),
    /// Fused parts of different types (a Q4_K_M file's Q4_K query with its Q6_K value, say), each kept in its
    /// own type and multiplied by its own kernel; the outputs are concatenated.
    Parts(Vec<Linear>),
    /// A CPU layer that candle multiplies (K-quants other than Q4_K, Q5_1, widened F16/BF16), cut into runs
    /// of output rows that run in parallel on our rayon pool. candle's own thread pool is pinned to one
    /// thread (two pools spinning against each other on the same cores are slower than either alone), so
    /// without this such layers used one core whatever `--threads` said. Each output element is the same
    /// dot product as unsplit (runs are whole groups of four rows, candle's column quads).
    RowChunks(Vec<Linear>),
}

impl Linear {
    /// A layer multiplied by one of our quantized kernels.
    fn kernel(m: impl KernelMatrix + 'static) -> Self {
        Self::Kernel(Arc::new(m))
    }

    /// A layer from one GGUF tensor, moved to `device`.
    pub fn new(w: QTensor, device: &Device, opts: LoadOptions) -> Result<Self> {
        Self::fused(vec![w], device, opts)
    }

    /// One layer whose output is the concatenation of the outputs of `parts` (all with the same `in`).
    /// Same-type quantized parts are stacked as raw blocks; parts of different types stay separate layers of
    /// their own types ([`Linear::Parts`]), except dense ones, which are widened to one f32 matrix.
    pub fn fused(parts: Vec<QTensor>, device: &Device, opts: LoadOptions) -> Result<Self> {
        let parts = parts
            .into_iter()
            .map(|p| repack(p, opts))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = parts.first() else {
            candle_core::bail!("no weights to fuse");
        };
        let dtype = first.dtype();
        let (_, cols) = first.shape().dims2()?;
        let mut rows = 0;
        for p in &parts {
            let (r, c) = p.shape().dims2()?;
            if c != cols {
                candle_core::bail!("cannot fuse weights with {c} and {cols} input columns");
            }
            rows += r;
        }
        let same_type = parts.iter().all(|p| p.dtype() == dtype);
        let dense = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        // the fused parts' blocks, one after the other (same type: rows stack byte for byte)
        let bytes = |parts: &[QTensor]| -> Result<Vec<u8>> {
            let mut data = Vec::new();
            for p in parts {
                data.extend_from_slice(&p.data()?);
            }
            Ok(data)
        };
        if same_type && device.is_cpu() {
            match dtype {
                GgmlDType::Q4_1 => {
                    return Ok(Self::kernel(Q4_1Matrix::from_bytes(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q4K if Q4KMatrix::runs_here(rows) && !opts.q4k_as_q4_1 => {
                    return Ok(Self::kernel(Q4KMatrix::from_q4k(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q4K => {
                    return Ok(Self::kernel(Q4_1Matrix::from_q4k(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q4_0 => {
                    return Ok(Self::Q4_0(Q4_0Matrix::from_bytes(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q5_1 => {
                    return Ok(Self::kernel(Q5_1Matrix::from_bytes(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q5K if Q5KMatrix::runs_here(rows) => {
                    return Ok(Self::kernel(Q5KMatrix::from_q5k(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q5K => {
                    return Ok(Self::kernel(Q5Matrix::from_q5k(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q6K if !opts.candle_q6k => {
                    return Ok(Self::kernel(Q6Matrix::from_q6k(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q5_0 => {
                    return Ok(Self::kernel(Q5_0Matrix::from_q5_0(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::Q8_0 => {
                    return Ok(Self::kernel(Q8_0Matrix::from_bytes(
                        &bytes(&parts)?,
                        rows,
                        cols,
                    )?));
                }
                GgmlDType::F16 | GgmlDType::BF16 if cols.is_multiple_of(32) => {
                    let kind = if dtype == GgmlDType::F16 {
                        HalfType::F16
                    } else {
                        HalfType::Bf16
                    };
                    return Ok(Self::Half(
                        HalfMatrix::from_bytes(kind, &bytes(&parts)?, rows, cols)?
                            .with_bf16_activations(!opts.exact_bf16),
                    ));
                }
                _ => {}
            }
        }
        let any_dense = parts
            .iter()
            .any(|p| matches!(p.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16));
        if !same_type && !any_dense {
            // runs of one type stay fused (Q|K of Q4_K, V of Q6_K: two layers, not three)
            let mut groups: Vec<Vec<QTensor>> = Vec::new();
            for p in parts {
                match groups.last_mut() {
                    Some(g) if g[0].dtype() == p.dtype() => g.push(p),
                    _ => groups.push(vec![p]),
                }
            }
            let layers = groups
                .into_iter()
                .map(|g| Self::fused(g, device, opts))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self::Parts(layers));
        }
        if same_type && !dense {
            if parts.len() == 1 && device.is_cpu() {
                let only = parts
                    .into_iter()
                    .next()
                    .ok_or_else(|| candle_core::Error::msg("no weights to fuse"))?;
                return Self::Quantized(QMatMul::from_qtensor(only)?).in_row_chunks(device);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes(&parts)?), device, dtype)?;
            let q = QTensor::new(storage, (rows, cols))?;
            return Self::Quantized(QMatMul::from_qtensor(q)?).in_row_chunks(device);
        }
        Self::dense(&parts, device, !device.is_cpu())?.in_row_chunks(device)
    }

    /// On the CPU with more than one rayon thread, a candle-multiplied layer as [`Linear::RowChunks`], one
    /// run of rows per thread; anything else unchanged.
    fn in_row_chunks(self, device: &Device) -> Result<Self> {
        let threads = rayon::current_num_threads();
        if !device.is_cpu() || threads < 2 {
            return Ok(self);
        }
        self.row_chunks(threads)
    }

    /// `self` cut into about `n` runs of whole groups of four output rows ([`Linear::RowChunks`]); layers
    /// our own kernels multiply (already parallel) and layers too small to split are returned unchanged.
    pub fn row_chunks(self, n: usize) -> Result<Self> {
        let rows = self.out_features()?;
        let per = rows.div_ceil(n.max(1)).next_multiple_of(4);
        if n < 2 || per >= rows {
            return Ok(self);
        }
        let starts = (0..rows).step_by(per);
        let chunks = match &self {
            Self::Dense(w) => starts
                .map(|r| {
                    Ok(Self::Dense(
                        w.narrow(0, r, per.min(rows - r))?.contiguous()?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
            Self::Quantized(QMatMul::QTensor(q)) => {
                let dtype = q.dtype();
                let (_, cols) = q.shape().dims2()?;
                let row_bytes = cols / dtype.block_size() * dtype.type_size();
                let data = q.data()?;
                starts
                    .map(|r| {
                        let take = per.min(rows - r);
                        let bytes = data[r * row_bytes..(r + take) * row_bytes].to_vec();
                        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
                        let part = QTensor::new(storage, (take, cols))?;
                        Ok(Self::Quantized(QMatMul::from_qtensor(part)?))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            _ => return Ok(self),
        };
        Ok(Self::RowChunks(chunks))
    }

    /// A dense layer from same-shaped parts: F16/BF16 parts of one type stay in that type when `keep_half`
    /// (the GPU path; the CPU widens, as its kernels and the golden tests expect), anything else is widened
    /// to f32.
    pub fn dense(parts: &[QTensor], device: &Device, keep_half: bool) -> Result<Self> {
        let first = parts.first().map(QTensor::dtype);
        let one_type = parts.iter().all(|p| Some(p.dtype()) == first);
        let half = match first {
            Some(GgmlDType::F16) => Some(DType::F16),
            Some(GgmlDType::BF16) => Some(DType::BF16),
            _ => None,
        };
        if let Some(dtype) = half.filter(|_| keep_half && one_type) {
            // The stored half values, byte for byte: no round trip through f32.
            let stored = parts
                .iter()
                .map(|p| {
                    let dims = p.shape().dims().to_vec();
                    Tensor::from_raw_buffer(&p.data()?, dtype, &dims, &Device::Cpu)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self::DenseHalf(Tensor::cat(&stored, 0)?.to_device(device)?));
        }
        let dense = parts
            .iter()
            .map(|p| p.dequantize(&Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        let w = Tensor::cat(&dense, 0)?
            .to_dtype(DType::F32)?
            .to_device(device)?;
        Ok(Self::Dense(w))
    }

    /// `x: [tokens, in]` → `[tokens, out]` (f32).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => x.matmul(&w.t()?),
            Self::DenseHalf(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32),
            Self::Quantized(q) => q.forward(x),
            Self::Half(h) => h.forward(x),
            Self::Kernel(k) => k.forward(x),
            Self::Q4_0(q) => q.forward(x),
            Self::Parts(parts) | Self::RowChunks(parts) => {
                // parts of one fused layer in turn; row chunks in parallel on the rayon pool
                let outs = if matches!(self, Self::RowChunks(_)) {
                    use rayon::prelude::*;
                    parts
                        .par_iter()
                        .map(|p| p.forward(x))
                        .collect::<Result<Vec<_>>>()?
                } else {
                    parts
                        .iter()
                        .map(|p| p.forward(x))
                        .collect::<Result<Vec<_>>>()?
                };
                Tensor::cat(&outs, candle_core::D::Minus1)
            }
        }
    }

    /// Whether [`Linear::gather`] can give this layer's rows (a tied LM head then serves the embedding
    /// lookups, and the table is not held twice).
    pub fn can_gather(&self) -> bool {
        match self {
            Self::Half(_) => true,
            Self::Kernel(k) => k.can_gather(),
            _ => false,
        }
    }

    /// Rows `ids` of the weight as f32 (`[ids.len(), in]` flattened), exactly the stored values.
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Self::Half(h) => h.gather(ids),
            Self::Kernel(k) => k.gather(ids),
            other => candle_core::bail!("rows of a {} layer cannot be gathered", other.kind()),
        }
    }

    /// Output features (rows of the weight).
    pub fn out_features(&self) -> Result<usize> {
        match self {
            Self::Dense(w) | Self::DenseHalf(w) => w.dim(0),
            Self::Quantized(QMatMul::QTensor(q)) => q.shape().dims2().map(|(r, _)| r),
            Self::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => w.dim(0),
            Self::Half(h) => Ok(h.rows()),
            Self::Kernel(k) => Ok(k.rows()),
            Self::Q4_0(q) => Ok(q.rows()),
            Self::Parts(parts) | Self::RowChunks(parts) => {
                parts.iter().map(Linear::out_features).sum()
            }
        }
    }

    /// A short description of the weight type (for load logs and benchmarks).
    pub fn kind(&self) -> String {
        match self {
            Self::Dense(_) => "dense f32".into(),
            Self::DenseHalf(w) => format!("dense {:?}", w.dtype()),
            Self::Quantized(QMatMul::QTensor(q)) => crate::gguf::ggml_name(q.dtype()).into(),
            Self::Quantized(_) => "dequantized".into(),
            Self::Half(h) => format!("{} (half kernel)", h.kind().name()),
            Self::Kernel(k) => k.source().into(),
            Self::Q4_0(_) => "Q4_0".into(),
            Self::Parts(parts) => parts.iter().map(Linear::kind).collect::<Vec<_>>().join("+"),
            Self::RowChunks(chunks) => match chunks.first() {
                Some(c) => format!("{} ×{} threads", c.kind(), chunks.len()),
                None => "empty".into(),
            },
        }
    }
}

fn repack(w: QTensor, opts: LoadOptions) -> Result<QTensor> {
    if opts.repack_q4_1 && w.dtype() == GgmlDType::Q4_1 {
        let dense = w.dequantize(&Device::Cpu)?;
        return QTensor::quantize(&dense, GgmlDType::Q8_0);
    }
    Ok(w)
}

/// Dequantizes selected rows of a `[rows, cols]` GGUF matrix (an embedding lookup that never widens the
/// whole table).
pub fn gather_rows(w: &QTensor, ids: &[u32], device: &Device) -> Result<Tensor> {
    let (rows, cols) = w.shape().dims2()?;
    let dtype = w.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = w.data()?;
    let mut picked = Vec::with_capacity(ids.len() * row_bytes);
    for &id in ids {
        let id = id as usize;
        if id >= rows {
            candle_core::bail!("token id {id} is outside the vocabulary ({rows})");
        }
        picked.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
    }
    let storage = QStorage::from_data(Cow::Owned(picked), &Device::Cpu, dtype)?;
    QTensor::new(storage, (ids.len(), cols))?
        .dequantize(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows cut into runs give the unsplit layer's outputs: bit for bit for candle's quantized kernels
    /// (every element is the same dot product), to rounding for the dense GEMM.
    #[test]
    fn row_chunks_compute_what_the_whole_layer_does() {
        let (rows, cols, m) = (70, 512, 3);
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .and_then(|t| t.affine(1e-4, -1.0))
            .and_then(|t| t.sin())
            .and_then(|t| t.reshape((rows, cols)))
            .expect("w");
        let x = Tensor::arange(0f32, (m * cols) as f32, &Device::Cpu)
            .and_then(|t| t.affine(3e-3, 0.5))
            .and_then(|t| t.cos())
            .and_then(|t| t.reshape((m, cols)))
            .expect("x");
        for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::F32] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            // built directly: `fused` itself already cuts a layer into one run per thread of the pool
            let whole = match dtype {
                GgmlDType::F32 => Linear::Dense(q.dequantize(&Device::Cpu).expect("dense")),
                _ => Linear::Quantized(QMatMul::from_qtensor(q).expect("layer")),
            };
            let split = whole.clone().row_chunks(3).expect("chunks");
            assert!(
                matches!(split, Linear::RowChunks(ref c) if c.len() == 3),
                "{dtype:?}"
            );
            assert_eq!(split.out_features().expect("rows"), rows);
            for xs in [x.clone(), x.narrow(0, 0, 1).expect("one token")] {
                let a = whole
                    .forward(&xs)
                    .and_then(|t| t.to_vec2::<f32>())
                    .expect("whole");
                let b = split
                    .forward(&xs)
                    .and_then(|t| t.to_vec2::<f32>())
                    .expect("split");
                if dtype == GgmlDType::F32 {
                    for (ra, rb) in a.iter().zip(&b) {
                        for (u, v) in ra.iter().zip(rb) {
                            assert!(
                                (u - v).abs() <= 1e-4 * u.abs().max(1.0),
                                "{dtype:?}: {u} vs {v}"
                            );
                        }
                    }
                } else {
                    assert_eq!(a, b, "{dtype:?}: split outputs differ");
                }
            }
        }
    }

    fn f16_weight(rows: usize, cols: usize) -> QTensor {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let w = Tensor::from_vec(vals, (rows, cols), &Device::Cpu).expect("w");
        QTensor::quantize(&w, GgmlDType::F16).expect("f16")
    }

    #[test]
    fn half_weights_kept_in_half_hold_the_stored_values_and_multiply_like_the_widened_ones() {
        let parts = vec![f16_weight(6, 32), f16_weight(4, 32)];
        let wide = Linear::dense(&parts, &Device::Cpu, false).expect("wide");
        let half = Linear::dense(&parts, &Device::Cpu, true).expect("half");
        assert_eq!(wide.kind(), "dense f32");
        assert_eq!(half.kind(), "dense F16");
        assert_eq!(half.out_features().expect("rows"), 10);
        let Linear::DenseHalf(hw) = &half else {
            panic!("not half")
        };
        let Linear::Dense(ww) = &wide else {
            panic!("not dense")
        };
        // Kept byte for byte: widening the half matrix gives exactly the f32 one.
        let diff = (hw.to_dtype(DType::F32).expect("widen") - ww)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert_eq!(diff, 0.0);
        let x = Tensor::from_vec(
            (0..3 * 32)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<_>>(),
            (3, 32),
            &Device::Cpu,
        )
        .expect("x");
        let a = wide.forward(&x).expect("wide fwd");
        let b = half.forward(&x).expect("half fwd");
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(b.dims(), &[3, 10]);
        // Only the activations' rounding to f16 differs (relative 2^-11 per term, 32 terms of |w·x| < 1).
        let err = (a - b)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(
            err > 0.0 && err < 0.02,
            "half vs f32 matmul differ by {err}"
        );
    }

    #[test]
    fn mixed_or_f32_parts_are_widened_even_when_half_is_asked_for() {
        let f32w = || {
            QTensor::quantize(
                &Tensor::ones((4, 32), DType::F32, &Device::Cpu).expect("ones"),
                GgmlDType::F32,
            )
            .expect("f32")
        };
        let l = Linear::dense(&[f16_weight(4, 32), f32w()], &Device::Cpu, true).expect("mixed");
        assert_eq!(l.kind(), "dense f32");
        let l = Linear::dense(&[f32w()], &Device::Cpu, true).expect("f32");
        assert_eq!(l.kind(), "dense f32");
    }
}
