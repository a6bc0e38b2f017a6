//! Greedy continuations of SmolLM2 against llama.cpp (`tests/golden/smollm2-greedy.json`, recorded once by
//! `scripts/reference/golden_llamacpp.py`), judged tie-aware.
//!
//! For each prompt we feed llama.cpp's own prompt tokens and decode greedily for as many tokens as it did.
//! A prompt passes if our tokens are identical, or if the first departure happens at a step where
//! llama.cpp's own top-1/top-2 logit gap was below [`NEAR_TIE`]: there llama.cpp itself is within its
//! numerical noise of picking our token, and everything after a departure conditions on different text.
//!
//! Thresholds come from measuring how far two correct engines drift apart on this model. While the texts
//! still agree, the test compares our top-1/top-2 logit gap with llama.cpp's at every step (reported, and
//! bounded by [`MAX_GAP_DIFF`] / [`MAX_GAP_DIFF_F16`] — this catches numeric bugs that do not flip a token).
//! - F16 weights: measured ≤ 0.022 over all 13 prompts (f16 KV cache both sides; llama.cpp also rounds
//!   Q and the attention probabilities to f16, we keep them f32). Near-tie bar 0.1, drift bound 0.1.
//! - Q8_0 / Q4_1 weights: both engines quantize activations to 8 bits per 32 values (Q8_0 / Q8_1) before
//!   every matmul. That step is discontinuous: the f16-level differences above flip individual roundings,
//!   and each flip moves a dot product by a whole quantization step, so two correct engines differ by the
//!   quantization noise itself — measured ≤ 0.58 logits of gap (≈ 2 % of SmolLM2's ~25-logit range) over
//!   all agreeing steps. Near-tie bar 0.75, drift bound 1.0. A departure where llama.cpp led by more than
//!   that is a bug. Measured (2026-12-06) over the 13 prompts: largest llama.cpp gap at a departure 0.35
//!   (Q4_1), 0.70 (Q8_0, step 13 of "def fibonacci"), and for llama.cpp's own quantizations 0.30 (Q4_K_M),
//!   0.28 (Q6_K), 0.20 (Q5_K_M), 0.17 (Q3_K_M), 0.06 (Q2_K), 0.73 (IQ4_NL), 0.14 (Q5_0), 0.26 (Q5_1);
//!   largest gap drift while the texts agree 0.49 (Q4_1), 0.71 (Q8_0), 0.75 (Q4_K_M), 0.98 (Q6_K, through
//!   candle's Q6_K kernel), 0.67 (Q5_K_M), 0.68 (Q3_K_M), 0.56 (Q2_K), 0.71 (IQ4_NL), 0.55 (Q5_0, Q5_1).
//!   K-quant weights need llama.cpp's Q8_K activations (one scale per 256 values) to stay inside these
//!   bounds: with per-32 activations Q3_K_M drifted 1.39 and departed where llama.cpp led by 1.25.
//!   Two numerics changes were needed to get here (see `model::kernels`): candle's AVX-512 path quantized
//!   Q8_0 activations per 256 values, and re-encoding Q4_1 as Q8_0 rounded the weights again; either one
//!   made ours depart on "Once upon a time" at step 1 where llama.cpp led by 0.28–0.31.
//!
//! The tokenizer is checked too: our encoding of each prompt must equal llama.cpp's.
//!
//! The engine runs on `LLAMA_TEST_DEVICE` (default the CPU): scripts/gpu-check.sh runs these on a GPU.

mod engine_common;

use candle_core::Device;
use llama_server::cli::Loaded;
use llama_server::engine::CacheSpec;
use llama_server::gguf::GgufFile;
use llama_server::kv_cache::KvDType;
use llama_server::model::generate::{
    SINGLE_BLOCK_SIZE, generate, generate_steps, single_sequence_blocks,
};
use llama_server::model::{LoadOptions, Model};
use llama_server::sampler::{Sampler, SamplingParams};
use llama_server::tokenizer::Tokenizer;

const NEAR_TIE: f64 = 0.75;
const MAX_GAP_DIFF: f64 = 1.0;
const NEAR_TIE_F16: f64 = 0.1;
const MAX_GAP_DIFF_F16: f64 = 0.1;

/// Our re-encodings of SmolLM2 (Q4_1 original, F16, Q8_0).
const GOLDEN: &str = "smollm2-greedy.json";
/// SmolLM2 quantized by llama.cpp's own quantizer into its presets (K-quant mixes with their Q5_0/Q5_1/Q8_0
/// fallbacks, IQ4_NL), recorded by `golden_llamacpp.py --quants`.
const GOLDEN_LLAMACPP: &str = "smollm2-llamacpp-greedy.json";

fn golden(file: &str) -> serde_json::Value {
    let path = engine_common::package_dir().join("tests/golden").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Our greedy tokens for one prompt and our own top-1/top-2 logit gap at each step.
type Run = (Vec<u32>, Vec<f64>);

/// Checks `key`'s golden prompts at tensor-parallel size `tp`; returns our run of each prompt.
fn check_model(key: &str, threshold: f64, max_drift: f64, tp: usize) -> Vec<Run> {
    check_golden(GOLDEN, key, threshold, max_drift, tp)
}

fn check_golden(
    golden_file: &str,
    key: &str,
    threshold: f64,
    max_drift: f64,
    tp: usize,
) -> Vec<Run> {
    let g = golden(golden_file);
    let m = &g["models"][key];
    let file = m["file"].as_str().expect("file");
    let path = if golden_file == GOLDEN_LLAMACPP {
        engine_common::test_models("llamacpp").join(file)
    } else if key == "q4_1" {
        engine_common::smollm2()
    } else {
        engine_common::test_models("smollm2").join(file)
    };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).expect("open")).expect("tokenizer");
    let prompts = m["prompts"].as_array().expect("prompts");
    let longest = prompts
        .iter()
        .map(|p| ids(&p["prompt_tokens"]).len() + ids(&p["tokens"]).len())
        .max()
        .unwrap_or(1);
    let cache = CacheSpec {
        num_blocks: single_sequence_blocks(longest),
        block_size: SINGLE_BLOCK_SIZE,
        dtype: KvDType::F16,
    };
    let mut model = Loaded::load(
        &path,
        engine_common::device_arg(),
        LoadOptions::default(),
        tp,
        cache,
    )
    .expect("load");
    let max_ctx = model.config.max_context;
    let key = &format!("{key} (TP {tp})");
    let mut all = Vec::new();
    let mut report = Vec::new();
    let mut max_gap_diff = 0f64;
    let mut failures = Vec::new();
    assert!(prompts.len() >= 10);
    for p in prompts {
        let prompt = p["prompt"].as_str().expect("prompt");
        let prompt_ids = ids(&p["prompt_tokens"]);
        let ours_prompt = tok.encode(prompt, true, true).expect("encode");
        assert_eq!(ours_prompt, prompt_ids, "{key}: tokenization of {prompt:?}");
        let want = ids(&p["tokens"]);
        let steps = p["steps"].as_array().expect("steps");
        let mut got = Vec::new();
        let mut gaps = Vec::new();
        let mut step = 0;
        generate_steps(
            |b| model.step(b),
            max_ctx,
            &prompt_ids,
            want.len(),
            &mut Sampler::new(SamplingParams::greedy()),
            &[],
            |s, logits| {
                // while the texts agree, measure how far our logits are from llama.cpp's
                if got == want[..step] {
                    let g = &steps[step];
                    let logit = |id: &str| f64::from(logits[g[id].as_u64().expect("id") as usize]);
                    let ours_gap = logit("top1") - logit("top2");
                    let d = (ours_gap - g["gap"].as_f64().expect("gap")).abs();
                    max_gap_diff = max_gap_diff.max(d);
                }
                let mut sorted = logits.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                gaps.push(f64::from(sorted[0] - sorted[1]));
                step += 1;
                got.push(s.token);
                true
            },
        )
        .expect("generate");
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => report.push(format!(
                "{key} {prompt:?}: identical ({} tokens)",
                want.len()
            )),
            Some(i) => {
                let gap = steps[i]["gap"].as_f64().expect("gap");
                let line = format!(
                    "{key} {prompt:?}: departs at step {i} (ours {}, llama.cpp {}, llama.cpp gap {gap:.4}); llama.cpp: {:?} ours: {:?}",
                    got[i],
                    want[i],
                    tok.decode(&want, false).unwrap_or_default(),
                    tok.decode(&got, false).unwrap_or_default()
                );
                if gap < threshold {
                    report.push(line);
                } else {
                    failures.push(line);
                }
            }
        }
        all.push((got, gaps));
    }
    eprintln!("{}", report.join("\n"));
    eprintln!(
        "{key}: largest difference of the top-1/top-2 gap, ours vs llama.cpp, while the texts agree: {max_gap_diff:.4}"
    );
    assert!(
        failures.is_empty(),
        "confident departures:\n{}",
        failures.join("\n")
    );
    assert!(
        max_gap_diff <= max_drift,
        "{key}: logits drift {max_gap_diff} from llama.cpp's (bound {max_drift})"
    );
    all
}

#[test]
fn q4_1_greedy_agrees_with_llama_cpp() {
    check_model("q4_1", NEAR_TIE, MAX_GAP_DIFF, 1);
}

/// SmolLM2's 9 heads / 3 KV heads split over 3 ranks (3 query heads, 1 KV head, 512 MLP features each):
/// the same tie-aware agreement with llama.cpp, and with TP 1 judged the same way — where TP 3 first
/// departs from TP 1, TP 1's own top-1/top-2 gap must be below [`NEAR_TIE`]. (The row-parallel sums round
/// differently, and the next layer's 8-bit activation quantization can turn that into a quantization step,
/// exactly as between two correct engines.)
#[test]
fn q4_1_greedy_at_tensor_parallel_size_3_agrees_with_llama_cpp_and_tp_1() {
    let tp3 = check_model("q4_1", NEAR_TIE, MAX_GAP_DIFF, 3);
    let tp1 = check_model("q4_1", NEAR_TIE, MAX_GAP_DIFF, 1);
    let (mut identical, mut largest_gap, mut confident) = (0, 0f64, Vec::new());
    for (i, ((a, gaps), (b, _))) in tp1.iter().zip(&tp3).enumerate() {
        match a.iter().zip(b).position(|(x, y)| x != y) {
            None => identical += 1,
            Some(step) => {
                let gap = gaps[step];
                largest_gap = largest_gap.max(gap);
                eprintln!("prompt {i}: TP 3 departs from TP 1 at step {step}, TP 1's gap {gap:.4}");
                if gap >= NEAR_TIE {
                    confident.push(format!("prompt {i} step {step}: TP 1 gap {gap:.4}"));
                }
            }
        }
    }
    eprintln!(
        "TP 3 equals TP 1 on {identical} of {} prompts; largest TP 1 gap at a departure {largest_gap:.4}",
        tp1.len()
    );
    assert!(
        confident.is_empty(),
        "TP 3 departs from TP 1 where TP 1 was confident:\n{}",
        confident.join("\n")
    );
}

#[test]
fn q8_0_greedy_agrees_with_llama_cpp() {
    check_model("q8_0", NEAR_TIE, MAX_GAP_DIFF, 1);
}

#[test]
fn f16_greedy_agrees_with_llama_cpp() {
    check_model("f16", NEAR_TIE_F16, MAX_GAP_DIFF_F16, 1);
}

/// llama.cpp's own Q4_K_M of SmolLM2: Q4_K and Q6_K where rows are whole 256-value super-blocks, Q5_0 and
/// Q8_0 fallbacks elsewhere (576 = 2.25 super-blocks), mixed inside the fused layers.
#[test]
fn llama_cpp_q4_k_m_greedy_agrees_with_llama_cpp() {
    check_golden(GOLDEN_LLAMACPP, "q4_k_m", NEAR_TIE, MAX_GAP_DIFF, 1);
}

#[test]
fn llama_cpp_q6_k_greedy_agrees_with_llama_cpp() {
    check_golden(GOLDEN_LLAMACPP, "q6_k", NEAR_TIE, MAX_GAP_DIFF, 1);
}

/// The other presets with golden continuations: Q5_K_M (Q5_K, Q5_1, Q6_K, Q8_0), Q3_K_M (Q3_K, Q4_K, Q5_K,
/// Q4_0, Q5_0, Q5_1), Q2_K (Q3_K, Q4_0), IQ4_NL (IQ4_NL, Q5_K), Q5_0 and Q5_1.
#[test]
fn llama_cpp_k_quant_and_legacy_presets_agree_with_llama_cpp() {
    for key in ["q5_k_m", "q3_k_m", "q2_k", "iq4_nl", "q5_0", "q5_1"] {
        check_golden(GOLDEN_LLAMACPP, key, NEAR_TIE, MAX_GAP_DIFF, 1);
    }
}

/// Every preset llama.cpp's quantizer writes for a Llama model without an importance matrix loads and
/// generates; IQ4_XS (which we do not read) is refused naming the tensor and the type.
#[test]
fn every_llama_cpp_preset_loads_or_names_what_it_cannot_read() {
    let dir = engine_common::test_models("llamacpp");
    for preset in [
        "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s",
        "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl",
    ] {
        let path = dir.join(format!("smollm2-llamacpp-{preset}.gguf"));
        let model = Model::load(&path, &Device::Cpu, LoadOptions::default())
            .unwrap_or_else(|e| panic!("{preset}: {e:#}"));
        let mut n = 0;
        generate(
            &model,
            &[1, 504, 3458, 282],
            4,
            &mut Sampler::new(SamplingParams::greedy()),
            &[],
            KvDType::F16,
            |_, _| {
                n += 1;
                true
            },
        )
        .unwrap_or_else(|e| panic!("{preset}: {e:#}"));
        assert_eq!(n, 4, "{preset}");
        eprintln!("{preset}: {}", model.weight_kinds());
    }
    let path = dir.join("smollm2-llamacpp-iq4_xs.gguf");
    let err =
        Model::load(&path, &Device::Cpu, LoadOptions::default()).expect_err("IQ4_XS is not read");
    let msg = format!("{err:#}");
    assert!(msg.contains("IQ4_XS") && msg.contains("blk."), "{msg}");
}

#[test]
fn once_upon_a_time_continues_like_llama_cpp() {
    let path = engine_common::smollm2();
    let model = Model::load(&path, &engine_common::device(), LoadOptions::default()).expect("load");
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).expect("open")).expect("tokenizer");
    let ids = tok.encode("Once upon a time", true, false).expect("encode");
    let mut out = Vec::new();
    generate(
        &model,
        &ids,
        12,
        &mut Sampler::new(SamplingParams::greedy()),
        &[],
        KvDType::F16,
        |s, _| {
            out.push(s.token);
            true
        },
    )
    .expect("generate");
    let text = tok.decode(&out, false).expect("decode");
    // " Nova" vs " New" is a near-tie in llama.cpp itself; accept either there
    assert!(
        text.starts_with(", the city of Nova Haven was a thriving metropolis")
            || text.starts_with(", the city of New"),
        "{text:?}"
    );
}
