//! Tensor parallelism against the unsharded model: tiny random Llamas with 8 heads / 4 KV heads
//! (`make_models.py --only tp`) of every tensor type, run greedily at TP 1, 2 and 4.
//!
//! Sharding changes one thing numerically: a row-parallel layer's output is the sum of the ranks' partial
//! products (in rank order), where TP 1 sums the whole row in one kernel. So the logits differ by float
//! rounding (bounded below, per type), while the tokens must be the same — unless TP 1's own top-1/top-2
//! gap at the departing step is within that rounding (a near tie), after which the texts condition on
//! different tokens and are not compared further.
//!
//! The vocab-parallel LM head (320 rows over 2 or 4 ranks) and the replicated one (forced) are both covered;
//! so is the tied embedding as LM head, and the K-quants' refusal of a split that cuts their 256-value blocks.

mod engine_common;

use std::path::Path;

use llama_server::cli::Loaded;
use llama_server::engine::CacheSpec;
use llama_server::kv_cache::KvDType;
use llama_server::model::LoadOptions;
use llama_server::model::generate::{SINGLE_BLOCK_SIZE, generate_steps, single_sequence_blocks};
use llama_server::sampler::{Sampler, SamplingParams};

const PROMPT: [u32; 12] = [1, 17, 250, 33, 4, 199, 87, 301, 12, 65, 140, 222];
const NEW: usize = 24;

/// Greedy tokens and every step's logits.
fn run(path: &Path, tp: usize, opts: LoadOptions) -> Result<(Vec<u32>, Vec<Vec<f32>>), String> {
    let cache = CacheSpec {
        num_blocks: single_sequence_blocks(PROMPT.len() + NEW),
        block_size: SINGLE_BLOCK_SIZE,
        dtype: KvDType::F32,
    };
    let mut model = Loaded::load(path, engine_common::device_arg(), opts, tp, cache)
        .map_err(|e| format!("{e:#}"))?;
    let max_ctx = model.config.max_context;
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    generate_steps(
        |b| model.step(b),
        max_ctx,
        &PROMPT,
        NEW,
        &mut Sampler::new(SamplingParams::greedy()),
        &[],
        |s, l| {
            tokens.push(s.token);
            logits.push(l.to_vec());
            true
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((tokens, logits))
}

fn top2_gap(l: &[f32]) -> f32 {
    let mut v = l.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

/// Compares a TP run with TP 1: identical tokens up to a departure at a near tie (`tie`), logits within
/// `tol` while the tokens agree. Returns the largest logit difference seen.
fn compare(
    what: &str,
    base: &(Vec<u32>, Vec<Vec<f32>>),
    got: &(Vec<u32>, Vec<Vec<f32>>),
    tol: f32,
    tie: f32,
) -> f32 {
    let mut worst = 0f32;
    for (i, (a, b)) in base.0.iter().zip(&got.0).enumerate() {
        let d = engine_common::max_abs_diff(&base.1[i], &got.1[i]);
        worst = worst.max(d);
        assert!(
            d <= tol,
            "{what}: step {i} logits differ by {d} (bound {tol})"
        );
        if a != b {
            let gap = top2_gap(&base.1[i]);
            assert!(
                gap <= tie,
                "{what}: step {i} picks {b}, TP 1 picks {a} with a top-1/top-2 gap of {gap} (not a near tie)"
            );
            eprintln!("{what}: departs at step {i} at a near tie (gap {gap})");
            return worst;
        }
    }
    assert_eq!(base.0.len(), got.0.len(), "{what}: token count");
    worst
}

/// Logit bounds per type. Dense weights: the partial sums of a row-parallel layer are rounded once more than
/// the whole sum — measured ≤ 1e-4 (f32, f16, bf16; 9e-5 with the tied head). Quantized weights multiply
/// 8-bit activations (Q8_0/Q8_1 per 32 values, Q8_K per 256) quantized per block: the blocks are the same
/// sharded or not, but a rounding-level difference in a layer's input can flip one activation's rounding,
/// which moves a dot product by a whole quantization step — measured 0 for Q8_0/Q4_0 (whose kernels sum
/// the same block products in the same order), ≤ 1.1e-5 for the K-quants and 2.7e-2 for Q4_1 (one such
/// flip). The bounds leave room for that, not for a wrong shard.
fn tolerance(name: &str) -> f32 {
    match name {
        "f32" | "f32-tied" | "f16" | "bf16" => 5e-4,
        _ => 0.1,
    }
}

#[test]
fn tp_2_and_4_give_the_tokens_of_tp_1_for_every_tensor_type() {
    let dir = engine_common::test_models("tp");
    let mut report = Vec::new();
    // BF16 twice: with f32 activations (exact, the dense bound) and with the default bf16-rounded ones on
    // AVX-512 BF16 CPUs, where a rounding-level change in a layer's input can move an activation's bf16
    // rounding by a whole step, as the quantized types' activation quantization does (measured 7.0e-3).
    let exact = LoadOptions {
        exact_bf16: true,
        ..LoadOptions::default()
    };
    let files = [
        "f32", "f32-tied", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k",
        "q4_k", "q5_k", "q6_k", "iq4_nl",
    ]
    .map(|n| {
        (
            n,
            n,
            if n == "bf16" {
                exact
            } else {
                LoadOptions::default()
            },
            tolerance(n),
        )
    });
    for (name, file, opts, tol) in files.into_iter().chain([(
        "bf16 (bf16 activations)",
        "bf16",
        LoadOptions::default(),
        5e-2,
    )]) {
        let path = dir.join(format!("tp-{file}.gguf"));
        let base = run(&path, 1, opts).expect("TP 1");
        let kquant = name.ends_with("_k");
        for tp in [2, 4] {
            let what = format!("{name} TP {tp}");
            let got = run(&path, tp, opts);
            if kquant && tp == 4 {
                // 512 columns of attn_output / 4 = 128 per rank: half a 256-value block.
                let err = got.expect_err("a K-quant split of 128 columns cuts a block");
                assert!(
                    err.contains("tensor-parallel size 4 cuts the 256-value quantization blocks of blk.0.attn_output.weight")
                        && err.contains("512 / 4 = 128 columns per rank, not a multiple of 256"),
                    "{what}: {err}"
                );
                report.push(format!("{what}: refused ({err})"));
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
            let worst = compare(&what, &base, &got, tol, 10.0 * tol);
            report.push(format!("{what}: largest logit difference {worst:.2e}"));
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_replicated_lm_head_gives_the_same_tokens_as_the_vocab_parallel_one() {
    let path = engine_common::test_models("tp").join("tp-q8_0.gguf");
    let base = run(&path, 1, LoadOptions::default()).expect("TP 1");
    let opts = LoadOptions {
        replicate_lm_head: true,
        ..LoadOptions::default()
    };
    let replicated = run(&path, 2, opts).expect("TP 2, replicated head");
    let parallel = run(&path, 2, LoadOptions::default()).expect("TP 2, vocab-parallel head");
    compare("replicated", &base, &replicated, 1e-3, 1e-2);
    // The head's rows are the same dot products either way: only the layers before it differ from TP 1.
    assert_eq!(replicated, parallel, "the LM head's split changes nothing");
}

#[test]
fn tensor_parallel_runs_are_reproducible_bit_for_bit() {
    let path = engine_common::test_models("tp").join("tp-q4_1.gguf");
    let a = run(&path, 4, LoadOptions::default()).expect("first");
    let b = run(&path, 4, LoadOptions::default()).expect("second");
    assert_eq!(
        a, b,
        "the all-reduce sums in rank order whatever the threads' timing"
    );
}

#[test]
fn a_size_that_does_not_divide_the_heads_is_refused_with_the_arithmetic() {
    let path = engine_common::test_models("tp").join("tp-f32.gguf");
    let err = run(&path, 3, LoadOptions::default()).expect_err("8 heads over 3 ranks");
    assert!(
        err.contains("tensor-parallel size 3 does not divide attention heads 8 (8 % 3 = 2)"),
        "{err}"
    );
    let err = run(&path, 8, LoadOptions::default()).expect_err("4 KV heads over 8 ranks");
    assert!(
        err.contains("tensor-parallel size 8 does not divide KV heads 4 (4 % 8 = 4)"),
        "{err}"
    );
}
