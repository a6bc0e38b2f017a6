//! The Rust forward pass against the independent numpy reference (`scripts/reference/llama_ref.py`) on tiny
//! random Llamas of every supported tensor type, plus batching/paging invariants of the forward pass.
//!
//! Each comparison runs a 6-token prefill and then 6 single-token decode steps through the paged cache,
//! comparing the logits of every step with the reference's logits at that position by relative L2 error
//! `‖rust − ref‖ / ‖ref‖`.
//!
//! Tolerances:
//! - F32, F16, BF16: ≤ 1e-3. The weights are exactly the reference's after dequantization; the only
//!   differences are f32 vs f64 arithmetic (≈1e-6) — the KV cache is kept in f32 here.
//! - Quantized types: candle's quantized matmul quantizes the *activations* per 32 (Q8_0) or 256 (Q8_K)
//!   values to 8 bits before the integer dot product, as llama.cpp does, while the reference multiplies in
//!   f64. One 8-bit rounding of the input costs ≈ 0.3–0.5 % relative error per matmul (uniform rounding of
//!   a 1/127 step over Gaussian-ish activations); 7 matmuls per layer × 2 layers plus the LM head compound
//!   to ~2–4 %. We allow 6e-2, and additionally require that the reference's top token is the Rust top
//!   token or within 5 % of the logit range of it. Q4_1 runs through its load-time repack to Q8_0, which
//!   adds at most 1/254 of each block's absolute maximum per weight.

mod engine_common;

use candle_core::Device;
use llama_server::batch::{BatchInput, SeqInput};
use llama_server::kv_cache::{AttentionImpl, KvCache, KvDType};
use llama_server::model::{LoadOptions, Model};

const TOKENS: [u32; 12] = [5, 17, 3, 200, 44, 1, 319, 77, 2, 150, 150, 9];
const PREFILL: usize = 6;

fn reference_logits(model: &std::path::Path, tokens: &[u32]) -> Vec<Vec<f64>> {
    let list = tokens
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(engine_common::python())
        .arg(engine_common::repo_root().join("scripts/reference/llama_ref.py"))
        .arg(model)
        .arg("--tokens")
        .arg(list)
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("run llama_ref.py");
    assert!(
        out.status.success(),
        "llama_ref.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

/// Logits at positions PREFILL-1 .. TOKENS.len()-1 from a prefill then single-token steps.
fn rust_logits(model: &Model, imp: AttentionImpl, kv: KvDType) -> Vec<Vec<f32>> {
    let bs = 4;
    let mut cache =
        KvCache::with_impl(model.config(), 8, bs, kv, &Device::Cpu, imp).expect("cache");
    let mut out = Vec::new();
    let b = BatchInput::single(&TOKENS[..PREFILL], 0, bs);
    out.push(logits_row(model, &b, &mut cache));
    for i in PREFILL..TOKENS.len() {
        let b = BatchInput::single(&TOKENS[i..i + 1], i, bs);
        out.push(logits_row(model, &b, &mut cache));
    }
    out
}

fn logits_row(model: &Model, b: &BatchInput, cache: &mut KvCache) -> Vec<f32> {
    model
        .forward(b, cache)
        .expect("forward")
        .squeeze(0)
        .expect("one row")
        .to_vec1::<f32>()
        .expect("f32")
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn check(name: &str, tol: f64) {
    check_with(name, tol, LoadOptions::default());
}

fn check_with(name: &str, tol: f64, opts: LoadOptions) {
    let path = engine_common::test_models("tiny").join(format!("{name}.gguf"));
    let model = Model::load(&path, &Device::Cpu, opts).expect("load");
    let reference = reference_logits(&path, &TOKENS);
    let ours = rust_logits(&model, AttentionImpl::Host, KvDType::F32);
    for (step, row) in ours.iter().enumerate() {
        let pos = PREFILL - 1 + step;
        let r = &reference[pos];
        let e = rel_err(row, r);
        assert!(
            e <= tol,
            "{name}: position {pos}: relative error {e:.2e} > {tol:.0e}"
        );
        let ref_top = (0..r.len())
            .max_by(|&a, &b| r[a].total_cmp(&r[b]))
            .expect("vocab");
        let our_top = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("vocab");
        let range =
            r.iter().copied().fold(f64::MIN, f64::max) - r.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            ref_top == our_top || r[ref_top] - r[our_top] <= 0.05 * range,
            "{name}: position {pos}: top token {our_top} vs reference {ref_top}"
        );
        eprintln!("{name}: position {pos}: relative error {e:.2e}");
    }
}

#[test]
fn f32_matches_the_numpy_reference() {
    check("tiny-f32", 1e-3);
}

#[test]
fn f32_with_tied_embeddings_matches_the_numpy_reference() {
    check("tiny-f32-tied", 1e-3);
}

#[test]
fn f16_matches_the_numpy_reference() {
    check("tiny-f16", 1e-3);
}

/// With `exact_bf16` the f32 activations meet the stored bf16 weights: f32 math, like the other dense types.
/// By default, CPUs with AVX-512 BF16 round the activations to bf16 for `vdpbf16ps` (llama.cpp's route):
/// up to 3.7e-3 was measured on the tiny model (3.7e-7 exact), so the bound is 1e-2 there (the default equals the exact path
/// elsewhere).
#[test]
fn bf16_matches_the_numpy_reference() {
    check_with(
        "tiny-bf16",
        1e-3,
        LoadOptions {
            exact_bf16: true,
            ..LoadOptions::default()
        },
    );
    check("tiny-bf16", 1e-2);
}

#[test]
fn q8_0_matches_the_numpy_reference() {
    check("tiny-q8_0", 6e-2);
}

#[test]
fn q4_0_matches_the_numpy_reference() {
    check("tiny-q4_0", 6e-2);
}

#[test]
fn q4_1_matches_the_numpy_reference() {
    check("tiny-q4_1", 6e-2);
}

#[test]
fn q5_0_matches_the_numpy_reference() {
    check("tiny-q5_0", 6e-2);
}

#[test]
fn q5_1_matches_the_numpy_reference() {
    check("tiny-q5_1", 6e-2);
}

#[test]
fn q2_k_matches_the_numpy_reference() {
    check("tiny-q2_k", 6e-2);
}

#[test]
fn q3_k_matches_the_numpy_reference() {
    check("tiny-q3_k", 6e-2);
}

/// IQ4_NL (llama.cpp's fallback inside Q2_K/Q3_K mixes; candle has no such type): read by our header parser,
/// converted to Q8_0 exactly; the reference dequantizes it with the `gguf` package's own IQ4_NL code.
#[test]
fn iq4_nl_matches_the_numpy_reference() {
    check("tiny-iq4_nl", 6e-2);
}

/// A Q4_K_M-like mix: Q|K of Q4_K with V of Q6_K, gate Q4_K with up Q5_0 (each fused layer keeps its parts in
/// their own types, not widened), attention output IQ4_NL, down Q6_K, LM head Q8_0, embedding Q5_1.
#[test]
fn a_mix_of_types_inside_fused_layers_matches_the_numpy_reference() {
    check("tiny-mixed", 6e-2);
    let path = engine_common::test_models("tiny").join("tiny-mixed.gguf");
    let model = Model::load(&path, &Device::Cpu, LoadOptions::default()).expect("load");
    let kinds = model.weight_kinds();
    assert!(
        kinds.contains("qkv=Q4_K+Q6_K") && kinds.contains("gate_up=Q4_K+Q5_0"),
        "fused layers of mixed types stay quantized: {kinds}"
    );
}

#[test]
fn q4_k_matches_the_numpy_reference() {
    check("tiny-q4_k", 6e-2);
}

#[test]
fn q5_k_matches_the_numpy_reference() {
    check("tiny-q5_k", 6e-2);
}

#[test]
fn q6_k_matches_the_numpy_reference() {
    check("tiny-q6_k", 6e-2);
}

fn tiny_f32() -> Model {
    let path = engine_common::test_models("tiny").join("tiny-f32.gguf");
    Model::load(&path, &Device::Cpu, LoadOptions::default()).expect("load")
}

#[test]
fn portable_attention_matches_the_host_kernel() {
    let model = tiny_f32();
    for kv in [KvDType::F32, KvDType::F16, KvDType::BF16] {
        let host = rust_logits(&model, AttentionImpl::Host, kv);
        let portable = rust_logits(&model, AttentionImpl::Portable, kv);
        for (h, p) in host.iter().zip(&portable) {
            assert!(
                engine_common::max_abs_diff(h, p) < 1e-3,
                "{kv:?}: {}",
                engine_common::max_abs_diff(h, p)
            );
        }
    }
}

/// Two sequences with scattered, interleaved blocks in one flat batch (one mid-prefill, one decoding)
/// give the same logits as each sequence run alone.
#[test]
#[allow(clippy::needless_range_loop)] // positions are the point here
fn batched_sequences_with_scattered_blocks_match_running_alone() {
    let model = tiny_f32();
    let bs = 4;
    for imp in [AttentionImpl::Host, AttentionImpl::Portable] {
        // alone
        let alone_a = {
            let mut c = KvCache::with_impl(model.config(), 8, bs, KvDType::F32, &Device::Cpu, imp)
                .expect("cache");
            logits_row(&model, &BatchInput::single(&TOKENS[..9], 0, bs), &mut c)
        };
        let alone_b = {
            let mut c = KvCache::with_impl(model.config(), 8, bs, KvDType::F32, &Device::Cpu, imp)
                .expect("cache");
            logits_row(&model, &BatchInput::single(&TOKENS[3..8], 0, bs), &mut c);
            logits_row(&model, &BatchInput::single(&TOKENS[8..9], 5, bs), &mut c)
        };
        // together: A owns blocks [6, 1, 4], B owns [3, 0]
        let mut c = KvCache::with_impl(model.config(), 8, bs, KvDType::F32, &Device::Cpu, imp)
            .expect("cache");
        let table_a = vec![6u32, 1, 4];
        let table_b = vec![3u32, 0];
        let slot = |t: &[u32], p: usize| t[p / bs] * bs as u32 + (p % bs) as u32;
        // step 1: A prefills its first 7 tokens (non-final chunk, no logits), B prefills its 5
        let mut b = BatchInput::default();
        for p in 0..7 {
            b.token_ids.push(TOKENS[p]);
            b.positions.push(p as u32);
            b.slot_mapping.push(slot(&table_a, p));
        }
        for p in 0..5 {
            b.token_ids.push(TOKENS[3 + p]);
            b.positions.push(p as u32);
            b.slot_mapping.push(slot(&table_b, p));
        }
        b.seqs = vec![
            SeqInput {
                start: 0,
                len: 7,
                context_len: 7,
                block_table: table_a.clone(),
                wants_logits: false,
            },
            SeqInput {
                start: 7,
                len: 5,
                context_len: 5,
                block_table: table_b.clone(),
                wants_logits: true,
            },
        ];
        let out = model.forward(&b, &mut c).expect("forward");
        assert_eq!(out.dims(), &[1, model.config().vocab_size]);
        // step 2: A's last prompt chunk (2 tokens) and B's decode step
        let mut b = BatchInput::default();
        for p in 7..9 {
            b.token_ids.push(TOKENS[p]);
            b.positions.push(p as u32);
            b.slot_mapping.push(slot(&table_a, p));
        }
        b.token_ids.push(TOKENS[8]);
        b.positions.push(5);
        b.slot_mapping.push(slot(&table_b, 5));
        b.seqs = vec![
            SeqInput {
                start: 0,
                len: 2,
                context_len: 9,
                block_table: table_a.clone(),
                wants_logits: true,
            },
            SeqInput {
                start: 2,
                len: 1,
                context_len: 6,
                block_table: table_b.clone(),
                wants_logits: true,
            },
        ];
        let out = model.forward(&b, &mut c).expect("forward");
        let rows = out.to_vec2::<f32>().expect("rows");
        assert!(
            engine_common::max_abs_diff(&rows[0], &alone_a) < 1e-4,
            "{imp:?} seq A"
        );
        assert!(
            engine_common::max_abs_diff(&rows[1], &alone_b) < 1e-4,
            "{imp:?} seq B"
        );
    }
}

#[test]
fn a_batch_naming_a_block_outside_the_cache_is_an_error() {
    let model = tiny_f32();
    let mut c = KvCache::new(model.config(), 2, 4, KvDType::F32, &Device::Cpu).expect("cache");
    let mut b = BatchInput::single(&[1, 2, 3], 0, 4);
    b.seqs[0].block_table = vec![5];
    assert!(model.forward(&b, &mut c).is_err());
    let mut b = BatchInput::single(&[1, 2, 3], 0, 4);
    b.slot_mapping[2] = 100;
    assert!(model.forward(&b, &mut c).is_err());
}

#[test]
fn bytes_per_block_counts_k_and_v_of_every_layer() {
    let model = tiny_f32();
    let cfg = model.config();
    // 2 layers × (K + V) × 16 tokens × 2 kv heads × 64 dims × 2 bytes
    assert_eq!(
        KvCache::bytes_per_block(cfg, 16, KvDType::F16),
        2 * 2 * 16 * 2 * 64 * 2
    );
}
