//! The host (CPU) paged-attention kernel: writes a step's K/V rows into their slots, then every (token, KV
//! head) pair attends causally over its sequence's context through the block table, for all query heads of
//! the GQA group at once.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::batch::BatchInput;
use crate::model::kernels::VecOps;

/// A cached K/V element type: how rows are stored and read back by the attention kernel.
pub(super) trait KvElem: Copy + Send + Sync + Default + 'static {
    fn from_f32(x: f32) -> Self;
    /// The row as f32: `src` itself for f32, otherwise widened into `buf`.
    fn row<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
    /// `scores[j·g + i] = q_i · cache[offs[j]..][..hd]` for the `g = q.len() / hd` heads of a group.
    fn scores(
        ops: &VecOps,
        q: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        scores: &mut [f32],
        buf: &mut [f32],
    ) {
        let g = q.len() / hd;
        for (j, &off) in offs.iter().enumerate() {
            let k = Self::row(&cache[off..off + hd], buf);
            for (o, qh) in scores[j * g..(j + 1) * g]
                .iter_mut()
                .zip(q.chunks_exact(hd))
            {
                *o = (ops.dot)(qh, k);
            }
        }
    }
    /// `o[i·hd + c] += Σ_j p[j·g + i] · cache[offs[j] + c]` for the `g = o.len() / hd` heads of a group.
    fn weighted(
        ops: &VecOps,
        p: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        o: &mut [f32],
        buf: &mut [f32],
    ) {
        let g = o.len() / hd;
        for (j, &off) in offs.iter().enumerate() {
            let v = Self::row(&cache[off..off + hd], buf);
            for (&w, oh) in p[j * g..(j + 1) * g].iter().zip(o.chunks_exact_mut(hd)) {
                (ops.axpy)(w, v, oh);
            }
        }
    }
}

impl KvElem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn row<'a>(src: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}
/// f16 (the default) reads many rows per call, widening each once in registers.
impl KvElem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn row<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(buf);
        buf
    }
    fn scores(
        ops: &VecOps,
        q: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        scores: &mut [f32],
        _: &mut [f32],
    ) {
        (ops.scores_f16)(q, cache, offs, hd, scores);
    }
    fn weighted(
        ops: &VecOps,
        p: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        o: &mut [f32],
        _: &mut [f32],
    ) {
        (ops.weighted_rows_f16)(p, cache, offs, hd, o);
    }
}
impl KvElem for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn row<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(buf);
        buf
    }
}

pub(super) struct Shape {
    pub(super) n_heads: usize,
    pub(super) n_kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) block_size: usize,
}

pub(super) fn host_attend<T: KvElem>(
    s: &Shape,
    q: &[f32],
    k_new: &[f32],
    v_new: &[f32],
    k_cache: &mut [T],
    v_cache: &mut [T],
    batch: &BatchInput,
) -> Vec<f32> {
    let row = s.n_kv_heads * s.head_dim;
    // 1. write the new rows into their slots
    for (i, &slot) in batch.slot_mapping.iter().enumerate() {
        let dst = slot as usize * row;
        for (d, x) in k_cache[dst..dst + row]
            .iter_mut()
            .zip(&k_new[i * row..(i + 1) * row])
        {
            *d = T::from_f32(*x);
        }
        for (d, x) in v_cache[dst..dst + row]
            .iter_mut()
            .zip(&v_new[i * row..(i + 1) * row])
        {
            *d = T::from_f32(*x);
        }
    }
    // 2. each (token, KV head) pair attends causally over its sequence's context through the block table,
    //    for all the query heads sharing that KV head at once (GQA): every K/V row is widened once per group
    let mut token_seq = Vec::with_capacity(batch.num_tokens());
    for (si, seq) in batch.seqs.iter().enumerate() {
        let cached = seq.context_len - seq.len;
        for i in 0..seq.len {
            token_seq.push((si, cached + i + 1));
        }
    }
    let k_cache: &[T] = k_cache;
    let v_cache: &[T] = v_cache;
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let ops = VecOps::detect();
    let mut out = vec![0f32; q.len()];
    let init = || (Vec::<f32>::new(), vec![0f32; hd], Vec::<usize>::new());
    // `o` holds the outputs of heads g*group .. (g+1)*group of one token (contiguous in [tokens, heads, hd]);
    // `scores[j * group + i]` is head i's score for context position j; `offs[j]` that position's row
    type State = (Vec<f32>, Vec<f32>, Vec<usize>);
    let body = |(scores, buf, offs): &mut State, (idx, o): (usize, &mut [f32])| {
        let (tok, g) = (idx / s.n_kv_heads, idx % s.n_kv_heads);
        let (si, n_ctx) = token_seq[tok];
        let table = &batch.seqs[si].block_table;
        let qg = &q[idx * group * hd..(idx + 1) * group * hd];
        offs.clear();
        offs.extend((0..n_ctx).map(|j| {
            let slot = table[j / s.block_size] as usize * s.block_size + j % s.block_size;
            slot * row + g * hd
        }));
        scores.clear();
        scores.resize(group * n_ctx, 0.0);
        T::scores(&ops, qg, k_cache, offs, hd, scores, buf);
        for i in 0..group {
            let max = (0..n_ctx).fold(f32::NEG_INFINITY, |m, j| m.max(scores[j * group + i]));
            let mut sum = 0f32;
            for j in 0..n_ctx {
                let e = ((scores[j * group + i] - max) * scale).exp();
                scores[j * group + i] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            (0..n_ctx).for_each(|j| scores[j * group + i] *= inv);
        }
        T::weighted(&ops, scores, v_cache, offs, hd, o, buf);
    };
    if rayon::current_num_threads() <= 1 {
        // inline: handing each layer to a one-thread pool costs two context switches
        let mut state = init();
        out.chunks_mut(group * hd)
            .enumerate()
            .for_each(|item| body(&mut state, item));
    } else {
        out.par_chunks_mut(group * hd)
            .enumerate()
            .for_each_init(init, body);
    }
    out
}
