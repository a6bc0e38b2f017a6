//! The engine on the device `LLAMA_TEST_DEVICE` names (default the CPU; scripts/gpu-check.sh sets `cuda`).
//!
//! - Batch invariance, always: sixteen sequences in one flat batch (scattered blocks, prompts of different
//!   lengths, then decode steps) give every sequence exactly the logits and greedy tokens it gets alone.
//! - Device against CPU (ignored unless run by gpu-check.sh): logits on the device vs the CPU host path on
//!   tiny models of each weight type, and our CUDA attention kernel vs the portable path on the device.

mod engine_common;

use candle_core::{DType, Device, Tensor};
use llama_server::batch::{BatchInput, SeqInput};
use llama_server::kv_cache::{AttentionImpl, KvCache, KvDType};
use llama_server::model::{LoadOptions, Model};

const SEQS: usize = 16;
const DECODE_STEPS: usize = 8;
const BLOCK: usize = 4;

fn model(file: &str, device: &Device) -> Model {
    let path = engine_common::test_models("tiny").join(file);
    Model::load(&path, device, LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn prompt(seq: usize, vocab: usize) -> Vec<u32> {
    (0..3 + seq)
        .map(|i| ((seq * 131 + i * 29 + 7) % vocab) as u32)
        .collect()
}

fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    logits
        .to_dtype(DType::F32)
        .and_then(|l| l.to_vec2::<f32>())
        .expect("logits to host")
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits of each step of one sequence (prefill, then greedy decode steps), run alone.
fn alone(model: &Model, seq: usize) -> Vec<Vec<f32>> {
    let p = prompt(seq, model.config().vocab_size);
    let blocks = (p.len() + DECODE_STEPS).div_ceil(BLOCK);
    let mut cache =
        KvCache::new(model.config(), blocks, BLOCK, KvDType::F16, model.device()).expect("cache");
    let mut out = vec![
        rows(
            &model
                .forward(&BatchInput::single(&p, 0, BLOCK), &mut cache)
                .expect("prefill"),
        )
        .remove(0),
    ];
    for step in 0..DECODE_STEPS {
        let next = argmax(out.last().expect("a row"));
        let b = BatchInput::single(&[next], p.len() + step, BLOCK);
        out.push(rows(&model.forward(&b, &mut cache).expect("decode")).remove(0));
    }
    out
}

/// The same sequences, all in one batch per step, over one cache with interleaved block tables.
fn together(model: &Model) -> Vec<Vec<Vec<f32>>> {
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..SEQS).map(|s| prompt(s, vocab)).collect();
    let per_seq = (prompts[SEQS - 1].len() + DECODE_STEPS).div_ceil(BLOCK);
    let mut cache = KvCache::new(
        model.config(),
        SEQS * per_seq,
        BLOCK,
        KvDType::F16,
        model.device(),
    )
    .expect("cache");
    // Sequence s owns blocks s, s + SEQS, s + 2·SEQS, ... in reverse order: nothing contiguous.
    let tables: Vec<Vec<u32>> = (0..SEQS)
        .map(|s| (0..per_seq).rev().map(|i| (s + i * SEQS) as u32).collect())
        .collect();
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); SEQS];
    let mut cached = [0usize; SEQS];
    for step in 0..=DECODE_STEPS {
        let mut b = BatchInput::default();
        for s in 0..SEQS {
            let new: Vec<u32> = if step == 0 {
                prompts[s].clone()
            } else {
                vec![argmax(out[s].last().expect("a row"))]
            };
            let start = b.token_ids.len();
            for (i, &t) in new.iter().enumerate() {
                let pos = cached[s] + i;
                b.token_ids.push(t);
                b.positions.push(pos as u32);
                b.slot_mapping
                    .push(tables[s][pos / BLOCK] * BLOCK as u32 + (pos % BLOCK) as u32);
            }
            cached[s] += new.len();
            b.seqs.push(SeqInput {
                start,
                len: new.len(),
                context_len: cached[s],
                block_table: tables[s][..cached[s].div_ceil(BLOCK)].to_vec(),
                wants_logits: true,
            });
        }
        let logits = rows(&model.forward(&b, &mut cache).expect("batched step"));
        for (s, row) in logits.into_iter().enumerate() {
            out[s].push(row);
        }
    }
    out
}

#[test]
fn sixteen_sequences_batched_get_exactly_the_logits_and_tokens_they_get_alone() {
    let device = engine_common::device();
    for file in ["tiny-q4_1.gguf", "tiny-q8_0.gguf"] {
        let m = model(file, &device);
        let batched = together(&m);
        let mut worst = 0f32;
        for (s, got) in batched.iter().enumerate() {
            let want = alone(&m, s);
            assert_eq!(got.len(), want.len());
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                worst = worst.max(engine_common::max_abs_diff(g, w));
                assert_eq!(
                    argmax(g),
                    argmax(w),
                    "{file}: sequence {s} step {step}: the greedy token depends on the batch"
                );
            }
        }
        println!(
            "{file} on {}: {SEQS} sequences × {} steps, batched vs alone: max |Δlogit| = {worst:e}",
            llama_server::device::describe(&device),
            DECODE_STEPS + 1
        );
        assert_eq!(
            worst, 0.0,
            "{file}: logits depend on the batch (max diff {worst:e})"
        );
    }
}

/// Relative L2 error of `a` against `b`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
#[ignore = "compares LLAMA_TEST_DEVICE with the CPU: run on a GPU by scripts/gpu-check.sh"]
fn the_device_matches_the_cpu_on_tiny_models_of_each_weight_type() {
    let device = engine_common::device();
    // Dense half weights multiply half-rounded activations on a GPU (≈1e-3); quantized ones quantize the
    // activations to 8 bits on both sides, in different groupings (≈ the 6e-2 of engine_reference.rs).
    for (file, bound) in [
        ("tiny-f32.gguf", 1e-3),
        ("tiny-f16.gguf", 1e-2),
        ("tiny-bf16.gguf", 3e-2),
        ("tiny-q8_0.gguf", 6e-2),
        ("tiny-q4_0.gguf", 6e-2),
        ("tiny-q4_1.gguf", 6e-2),
        ("tiny-q4_k.gguf", 6e-2),
        ("tiny-q5_k.gguf", 6e-2),
        ("tiny-q6_k.gguf", 6e-2),
    ] {
        let on_device = model(file, &device);
        let on_cpu = model(file, &Device::Cpu);
        let (d, c) = (alone(&on_device, 5), alone(&on_cpu, 5));
        let worst = d
            .iter()
            .zip(&c)
            .map(|(x, y)| rel_l2(x, y))
            .fold(0.0, f64::max);
        let same_tokens = d
            .iter()
            .zip(&c)
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count();
        println!(
            "{file}: {} vs cpu: max relative L2 of logits {worst:.2e} (bound {bound:e}); top token equal at {same_tokens}/{} steps; weights {}",
            llama_server::device::describe(&device),
            d.len(),
            on_device.weight_kinds()
        );
        assert!(
            worst <= bound,
            "{file}: device and CPU logits differ by {worst:e}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA device: run on a GPU by scripts/gpu-check.sh"]
fn the_cuda_attention_kernel_matches_the_portable_path_on_the_device() {
    let device = engine_common::device();
    assert!(
        device.is_cuda(),
        "LLAMA_TEST_DEVICE must name a CUDA device"
    );
    let m = model("tiny-f32.gguf", &device);
    let cfg = m.config().clone();
    let tokens: Vec<u32> = prompt(9, cfg.vocab_size);
    for kv in [KvDType::F32, KvDType::F16, KvDType::BF16] {
        let run = |imp| {
            let mut c = KvCache::with_impl(&cfg, 16, BLOCK, kv, &device, imp).expect("cache");
            let mut out = rows(
                &m.forward(&BatchInput::single(&tokens[..7], 0, BLOCK), &mut c)
                    .expect("prefill"),
            );
            for i in 7..tokens.len() {
                let b = BatchInput::single(&tokens[i..i + 1], i, BLOCK);
                out.extend(rows(&m.forward(&b, &mut c).expect("decode")));
            }
            out
        };
        let (kernel, portable) = (run(AttentionImpl::Cuda), run(AttentionImpl::Portable));
        let worst = kernel
            .iter()
            .zip(&portable)
            .map(|(a, b)| engine_common::max_abs_diff(a, b))
            .fold(0.0, f32::max);
        println!(
            "{kv:?} cache: CUDA kernel vs portable path on the device: max |Δlogit| = {worst:e}"
        );
        assert!(
            worst < 1e-3,
            "{kv:?}: kernel vs portable differ by {worst:e}"
        );
    }
}
