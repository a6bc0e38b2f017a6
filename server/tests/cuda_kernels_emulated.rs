//! The CUDA paged-attention kernels (`src/kv_cache/paged_attention.cu`), run on the CPU.
//!
//! No GPU here, so the kernel source is compiled unchanged with g++ against `tests/cuda_emu/simt.hpp`, a SIMT
//! emulation (one OS thread per CUDA thread, warp shuffles and block barriers as real exchanges), and driven
//! through several engine steps — prefill, chunked prefill, decode, sequences joining mid-way, scattered block
//! tables, GQA, a head dimension that is not a multiple of the warp — for every cache type. Its outputs are
//! compared with the portable candle-ops path (`AttentionImpl::Portable`, itself checked against llama.cpp by
//! the golden tests) on the same inputs. This checks the kernels' indexing, causal masking, online softmax
//! and warp merge; `make cuda-check` checks that NVRTC compiles them and ptxas assembles them for sm_90, and
//! `scripts/gpu-check.sh` compares them with the portable path on a real GPU.

mod engine_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use llama_server::batch::{BatchInput, SeqInput};
use llama_server::kv_cache::{AttentionImpl, KvCache, KvDType};
use llama_server::model::{ModelConfig, RopeStyle};

/// The emulator binary, built once per test run.
fn emulator() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin = dir.join("cuda_emu_run_kernels");
        let src = engine_common::package_dir().join("tests/cuda_emu/run_kernels.cpp");
        let out = Command::new("g++")
            .args([
                "-std=c++20",
                "-O2",
                "-pthread",
                "-Wall",
                "-Werror",
                "-Wno-unknown-pragmas",
            ])
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("g++ (the C++ compiler) runs: it builds the kernel emulation");
        assert!(
            out.status.success(),
            "g++ could not build {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Uniform values in ±scale; every tenth one sits exactly halfway between two bf16 values and every
    /// tenth (offset 5) halfway between two f16 values, where only round-to-nearest-even decides.
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (self.uniform() * scale).to_bits();
                f32::from_bits(match i % 10 {
                    0 => (x & 0xffff_0000) | 0x8000,
                    5 => (x & !0x1fff) | 0x1000,
                    _ => x,
                })
            })
            .collect()
    }
}

fn config(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        vocab_size: 32,
        embedding_length: n_heads * head_dim,
        n_layers: 1,
        n_heads,
        n_kv_heads,
        head_dim,
        feed_forward_length: 64,
        max_context: 4096,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_style: RopeStyle::Interleaved,
        bos_token_id: 1,
        eos_token_id: 2,
    }
}

/// One step: each entry is (sequence, new tokens); sequences keep their block tables across steps.
type Step = Vec<(usize, usize)>;

/// A flat batch for `step`, given how many tokens each sequence already has cached.
fn batch(step: &Step, cached: &mut [usize], tables: &[Vec<u32>], block_size: usize) -> BatchInput {
    let mut b = BatchInput::default();
    for &(seq, len) in step {
        let start = b.token_ids.len();
        for i in 0..len {
            let pos = cached[seq] + i;
            b.token_ids.push(0);
            b.positions.push(pos as u32);
            b.slot_mapping.push(
                tables[seq][pos / block_size] * block_size as u32 + (pos % block_size) as u32,
            );
        }
        cached[seq] += len;
        let blocks = cached[seq].div_ceil(block_size);
        b.seqs.push(SeqInput {
            start,
            len,
            context_len: cached[seq],
            block_table: tables[seq][..blocks].to_vec(),
            wants_logits: true,
        });
    }
    b
}

fn push_i32(buf: &mut Vec<u8>, v: &[i32]) {
    v.iter()
        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
}
fn push_u32(buf: &mut Vec<u8>, v: &[u32]) {
    v.iter()
        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
}
fn push_f32(buf: &mut Vec<u8>, v: &[f32]) {
    v.iter()
        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
}

/// Runs `steps` through the portable path and the emulated kernels; returns the largest difference.
fn compare(cfg: &ModelConfig, block_size: usize, dtype: KvDType, steps: &[Step], seed: u64) -> f32 {
    let n_seqs = 1 + steps.iter().flatten().map(|&(s, _)| s).max().unwrap_or(0);
    let longest = (0..n_seqs)
        .map(|s| {
            steps
                .iter()
                .flatten()
                .filter(|&&(q, _)| q == s)
                .map(|&(_, n)| n)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    // Every sequence gets enough blocks, plus a few nobody uses.
    let num_blocks = n_seqs * longest.div_ceil(block_size) + 3;
    // Scattered, disjoint block tables: sequence s gets every n_seqs-th block of a shuffled list.
    let mut rng = Rng(seed);
    let mut order: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..order.len()).rev() {
        let j = ((rng.uniform() + 1.0) / 2.0 * (i + 1) as f32) as usize % (i + 1);
        order.swap(i, j);
    }
    let tables: Vec<Vec<u32>> = (0..n_seqs)
        .map(|s| order.iter().skip(s).step_by(n_seqs).copied().collect())
        .collect();
    let mut cache = KvCache::with_impl(
        cfg,
        num_blocks,
        block_size,
        dtype,
        &Device::Cpu,
        AttentionImpl::Portable,
    )
    .expect("portable cache");
    let (h, kv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let code = match dtype {
        KvDType::F32 => 0,
        KvDType::F16 => 1,
        KvDType::BF16 => 2,
    };
    let mut input = Vec::new();
    push_i32(
        &mut input,
        &[
            code,
            block_size as i32,
            h as i32,
            kv as i32,
            d as i32,
            (num_blocks * block_size) as i32,
            steps.len() as i32,
        ],
    );
    let mut cached = vec![0; n_seqs];
    let mut expected = Vec::new();
    for step in steps {
        let b = batch(step, &mut cached, &tables, block_size);
        cache.check_batch(&b).expect("a valid batch");
        let n = b.num_tokens();
        let q = rng.vec(n * h * d, 2.0);
        let k = rng.vec(n * kv * d, 1.0);
        let v = rng.vec(n * kv * d, 1.0);
        let t =
            |x: &[f32], heads| Tensor::from_slice(x, (n, heads, d), &Device::Cpu).expect("tensor");
        let out = cache
            .attend(0, &t(&q, h), &t(&k, kv), &t(&v, kv), &b)
            .expect("portable attend")
            .flatten_all()
            .and_then(|o| o.to_vec1::<f32>())
            .expect("output");
        expected.extend(out);
        // The kernel's own view of the batch, built by the function kv_cache/cuda.rs uses.
        let (tok_seq, seq_info, flat) = llama_server::kv_cache::kernel_metadata(&b);
        push_i32(
            &mut input,
            &[n as i32, b.seqs.len() as i32, flat.len() as i32],
        );
        push_f32(&mut input, &q);
        push_f32(&mut input, &k);
        push_f32(&mut input, &v);
        push_u32(&mut input, &b.slot_mapping);
        push_u32(&mut input, &tok_seq);
        push_u32(&mut input, &seq_info);
        push_u32(&mut input, &flat);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tag = format!("{seed}-{code}-{d}");
    let (inp, outp) = (
        dir.join(format!("emu-in-{tag}")),
        dir.join(format!("emu-out-{tag}")),
    );
    std::fs::write(&inp, &input).expect("write input");
    let run = Command::new(emulator())
        .arg(&inp)
        .arg(&outp)
        .output()
        .expect("run emulator");
    assert!(
        run.status.success(),
        "emulator failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Vec<f32> = std::fs::read(&outp)
        .expect("emulator output")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "one output row per token and head"
    );
    let _ = std::fs::remove_file(&inp);
    let _ = std::fs::remove_file(&outp);
    got.iter()
        .zip(&expected)
        .map(|(a, b)| {
            assert!(a.is_finite(), "the kernel wrote a non-finite value ({a})");
            (a - b).abs()
        })
        .fold(0.0, f32::max)
}

/// Prefill of three sequences; then a decode, a prompt chunk, another decode and a sequence joining; then
/// decodes all round (contexts up to 45 tokens over blocks scattered through the cache).
fn engine_steps() -> Vec<Step> {
    vec![
        vec![(0, 5), (1, 19), (2, 1)],
        vec![(0, 1), (1, 7), (2, 1), (3, 3)],
        vec![(1, 19), (3, 1)],
        vec![(0, 1), (1, 1), (2, 1), (3, 1)],
    ]
}

#[test]
fn the_cuda_kernels_match_the_portable_path_for_every_cache_type() {
    // GQA 6 query heads over 2 KV heads, head_dim 80 (lanes past the head's end idle), blocks of 16.
    let cfg = config(6, 2, 80);
    for (dtype, bound) in [
        (KvDType::F32, 2e-5),
        (KvDType::F16, 2e-5),
        (KvDType::BF16, 2e-5),
    ] {
        let diff = compare(&cfg, 16, dtype, &engine_steps(), 7);
        println!("{dtype:?} cache, head_dim 80: max |kernel − portable| = {diff:.2e}");
        assert!(
            diff <= bound,
            "{dtype:?}: kernel and portable path differ by {diff}"
        );
    }
}

#[test]
fn the_cuda_kernels_take_the_largest_head_and_small_blocks() {
    // head_dim 256 (the kernel's limit: eight values per lane), no GQA, blocks of 4 tokens.
    let cfg = config(2, 2, 256);
    let diff = compare(&cfg, 4, KvDType::F16, &engine_steps()[..3], 11);
    println!("F16 cache, head_dim 256, blocks of 4: max |kernel − portable| = {diff:.2e}");
    assert!(diff <= 2e-5, "kernel and portable path differ by {diff}");
}
