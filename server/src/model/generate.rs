//! Single-sequence generation over the paged cache (the CLI path and the tests; the server's engine
//! batches many sequences through [`Model::forward`] directly).

use std::time::{Duration, Instant};

use candle_core::Result;

use super::Model;
use crate::batch::BatchInput;
use crate::kv_cache::{KvCache, KvDType};
use crate::sampler::{Sampled, Sampler};

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (including a final EOS if one was produced).
    pub generated_tokens: usize,
    /// Time to process the prompt and sample the first token.
    pub prefill: Duration,
    /// Time of all later steps.
    pub decode: Duration,
}

impl GenerateStats {
    /// Prompt tokens per second.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Block size of the single-sequence cache.
pub const SINGLE_BLOCK_SIZE: usize = 16;

/// Blocks of [`SINGLE_BLOCK_SIZE`] one sequence of `tokens` tokens needs.
pub fn single_sequence_blocks(tokens: usize) -> usize {
    tokens.max(1).div_ceil(SINGLE_BLOCK_SIZE)
}

/// A cache large enough for one sequence of `tokens` tokens (this rank's KV heads).
pub fn single_sequence_cache(model: &Model, tokens: usize, dtype: KvDType) -> Result<KvCache> {
    let blocks = single_sequence_blocks(tokens);
    KvCache::new(
        model.rank_config(),
        blocks,
        SINGLE_BLOCK_SIZE,
        dtype,
        model.device(),
    )
}

/// Generates up to `max_new` tokens after `prompt`, calling `on_token` with each sampled token and the
/// step's logits; stops after a token in `stop` or when `on_token` returns false.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    kv_dtype: KvDType,
    on_token: impl FnMut(&Sampled, &[f32]) -> bool,
) -> Result<GenerateStats> {
    let total = (prompt.len() + max_new).min(model.config().max_context);
    let mut cache = single_sequence_cache(model, total, kv_dtype)?;
    generate_steps(
        |batch| model.forward(batch, &mut cache)?.to_vec2::<f32>(),
        model.config().max_context,
        prompt,
        max_new,
        sampler,
        stop,
        on_token,
    )
}

/// [`generate`] over any step function (a [`crate::engine::TpGroup`], for one): `step` runs one batch
/// on a cache holding [`single_sequence_blocks`] blocks of [`SINGLE_BLOCK_SIZE`] for `prompt.len() + max_new`
/// tokens (at most `max_context`) and returns one logits row.
pub fn generate_steps(
    mut run_step: impl FnMut(&BatchInput) -> Result<Vec<Vec<f32>>>,
    max_context: usize,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    mut on_token: impl FnMut(&Sampled, &[f32]) -> bool,
) -> Result<GenerateStats> {
    if prompt.is_empty() {
        candle_core::bail!("empty prompt");
    }
    let total = (prompt.len() + max_new).min(max_context);
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..GenerateStats::default()
    };
    let mut history: Vec<u32> = prompt.to_vec();
    let mut cached = 0;
    let mut input: Vec<u32> = prompt.to_vec();
    let start = Instant::now();
    for step in 0..max_new {
        if cached + input.len() > total {
            break;
        }
        let batch = BatchInput::single(&input, cached, SINGLE_BLOCK_SIZE);
        let Some(logits) = run_step(&batch)?.into_iter().next() else {
            candle_core::bail!("the step returned no logits");
        };
        cached += input.len();
        let out = sampler.sample(&logits, &history[prompt.len()..]);
        stats.generated_tokens += 1;
        if step == 0 {
            stats.prefill = start.elapsed();
        }
        history.push(out.token);
        let go_on = on_token(&out, &logits);
        if !go_on || stop.contains(&out.token) {
            break;
        }
        input = vec![out.token];
    }
    stats.decode = start.elapsed().saturating_sub(stats.prefill);
    Ok(stats)
}
