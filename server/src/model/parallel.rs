//! Tensor-parallel layers (Megatron-style): each rank holds a slice of every matrix, and the layer type says
//! which axis it splits, so the model's `forward` never asks whether it runs sharded.
//!
//! - [`ColumnParallel`] (Q/K/V, gate/up): this rank's output features (whole heads, `ffn / size` of the MLP).
//!   Its output stays local: attention and SwiGLU work per head / per feature.
//! - [`RowParallel`] (attention output, down): this rank's input features; the partial products of all ranks
//!   are summed by an all-reduce, after which every rank holds the whole layer's output.
//! - [`LmHead`]: vocab-parallel (each rank `vocab / size` rows, all-gathered) when `size` divides the
//!   vocabulary, else replicated.
//!
//! With one rank every layer is the plain [`Linear`] and no collective runs, so TP 1 computes exactly what the
//! unsharded model does.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::Linear;
use crate::comm::{Communicator, CpuGroup};
use crate::gguf::GgufFile;

use super::ModelConfig;

/// This rank's place in its tensor-parallel group.
#[derive(Clone)]
pub struct TensorParallel {
    pub comm: Arc<dyn Communicator>,
}

impl std::fmt::Debug for TensorParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorParallel")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

impl TensorParallel {
    /// A group of one: the whole model on one device.
    pub fn single() -> Self {
        let comm = CpuGroup::connect(1)
            .pop()
            .map(|c| Arc::new(c) as Arc<dyn Communicator>)
            .unwrap_or_else(|| unreachable!("connect(1) returns one rank"));
        Self { comm }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }
}

fn comm_err(e: crate::comm::CommError) -> candle_core::Error {
    candle_core::Error::msg(e.to_string())
}

/// Sums `x` (f32) over the ranks; every rank gets the sum. A no-op for one rank.
pub fn all_reduce(comm: &dyn Communicator, x: Tensor) -> Result<Tensor> {
    if comm.size() == 1 {
        return Ok(x);
    }
    if let Some(on_device) = comm.all_reduce_tensor(&x) {
        return on_device;
    }
    let (dims, device) = (x.dims().to_vec(), x.device().clone());
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    comm.all_reduce_sum(&mut v).map_err(comm_err)?;
    Tensor::from_vec(v, dims, &device)
}

/// A layer that holds this rank's output features (rows of `[out, in]`); its output is this rank's slice.
#[derive(Debug, Clone)]
pub struct ColumnParallel(pub Linear);

impl ColumnParallel {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }

    pub fn kind(&self) -> String {
        self.0.kind()
    }
}

/// A layer that holds this rank's input features (columns of `[out, in]`), fed this rank's slice of the
/// input; the all-reduce of the partial products is the whole layer's output, on every rank.
#[derive(Clone)]
pub struct RowParallel {
    pub linear: Linear,
    pub comm: Arc<dyn Communicator>,
}

impl std::fmt::Debug for RowParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RowParallel").field(&self.linear).finish()
    }
}

impl RowParallel {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        all_reduce(&*self.comm, self.linear.forward(x)?)
    }

    pub fn kind(&self) -> String {
        self.linear.kind()
    }
}

/// The output projection to the vocabulary.
#[derive(Clone)]
pub enum LmHead {
    /// Every rank holds the whole matrix (one rank, or a vocabulary the group size does not divide).
    Replicated(Linear),
    /// Rank r holds vocabulary rows `[r·V/n, (r+1)·V/n)`; the logits are all-gathered.
    VocabParallel {
        linear: Linear,
        comm: Arc<dyn Communicator>,
    },
}

impl std::fmt::Debug for LmHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Replicated(l) => f.debug_tuple("Replicated").field(l).finish(),
            Self::VocabParallel { linear, .. } => {
                f.debug_tuple("VocabParallel").field(linear).finish()
            }
        }
    }
}

impl LmHead {
    /// `x: [tokens, embedding]` → logits `[tokens, vocab]` (f32) on every rank.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Replicated(l) => l.forward(x),
            Self::VocabParallel { linear, comm } => {
                let local = linear.forward(x)?;
                let (tokens, part) = local.dims2()?;
                let size = comm.size();
                let gathered = match comm.all_gather_tensor(&local) {
                    Some(on_device) => on_device?.to_vec1::<f32>()?,
                    None => {
                        let flat = local.flatten_all()?.to_vec1::<f32>()?;
                        let mut gathered = vec![0f32; flat.len() * size];
                        comm.all_gather(&flat, &mut gathered).map_err(comm_err)?;
                        gathered
                    }
                };
                // gathered is [rank][token][part]; logits are [token][rank·part]
                let mut logits = Vec::with_capacity(gathered.len());
                for t in 0..tokens {
                    for r in 0..size {
                        let at = (r * tokens + t) * part;
                        logits.extend_from_slice(&gathered[at..at + part]);
                    }
                }
                Tensor::from_vec(logits, (tokens, part * size), x.device())
            }
        }
    }

    pub fn kind(&self) -> String {
        match self {
            Self::Replicated(l) => l.kind(),
            Self::VocabParallel { linear, .. } => format!("{} vocab-parallel", linear.kind()),
        }
    }
}

/// Whether `size` ranks can split the model in `file`: `size` must divide the attention heads, the KV heads
/// and the MLP width, and each rank's columns of every row-parallel matrix (attention output, down) must be
/// whole quantization blocks. The arithmetic is `llama_contract::tensor_parallel`'s, the operator's too.
/// Returns what was checked, or the first problem.
pub fn check_tensor_parallel<R: std::io::Read + std::io::Seek>(
    file: &GgufFile<R>,
    cfg: &ModelConfig,
    size: usize,
) -> std::result::Result<Vec<String>, String> {
    use llama_contract::tensor_parallel::{divides, whole_blocks};
    let tp = size as u64;
    let mut checked = vec![
        divides(tp, "attention heads", cfg.n_heads as u64)?,
        divides(tp, "KV heads", cfg.n_kv_heads as u64)?,
        divides(tp, "feed-forward length", cfg.feed_forward_length as u64)?,
    ];
    if size > 1 {
        for layer in 0..cfg.n_layers {
            for name in ["attn_output", "ffn_down"] {
                let name = format!("blk.{layer}.{name}.weight");
                let Ok((dtype, dims)) = file.tensor_info(&name) else {
                    continue; // reported by the loader as a missing tensor
                };
                let cols = dims.get(1).copied().unwrap_or(0) as u64;
                let ok = whole_blocks(
                    tp,
                    &format!("{name} ({dtype:?})"),
                    cols,
                    dtype.block_size() as u64,
                )?;
                if layer == 0 {
                    checked.push(ok);
                }
            }
        }
    }
    Ok(checked)
}
