//! Token sampling: a resolved [`SamplingParams`] plus a per-request [`Sampler`] owning its own seeded RNG,
//! so what a seeded request gets never depends on how requests are batched.
//!
//! Order of operations on a step's logits:
//! 1. logit bias, then repetition penalty (HF/llama.cpp style: positive logits divided, negative
//!    multiplied) and presence/frequency penalties (OpenAI style) over `previous_tokens`;
//! 2. log-probabilities (`logprob`, `top_logprobs`) are taken here, from the penalised logits at
//!    temperature 1 — the model's distribution as the request shaped it, before truncation;
//! 3. temperature 0 ⇒ greedy (argmax, lowest id on ties); otherwise divide by the temperature, keep the
//!    top-k, then the smallest set with cumulative probability ≥ top-p, then drop tokens below
//!    min-p × the highest probability, and draw from what remains.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings, already validated (temperature ≥ 0, 0 < top_p ≤ 1, 0 ≤ min_p ≤ 1, penalties finite).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus sampling threshold; 1 disables.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token; 0 disables.
    pub min_p: f32,
    /// Multiplicative penalty for tokens in `previous_tokens`; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token in `previous_tokens`; 0 disables.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in `previous_tokens`; 0 disables.
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens (ids outside the vocabulary are ignored).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the request's RNG.
    pub seed: u64,
    /// How many most likely tokens (with log-probabilities) to report per step; 0 for none.
    pub top_logprobs: usize,
    /// Compute the sampled token's log-probability (a log-sum-exp over the whole vocabulary, skipped when
    /// nobody asked: [`Sampled::logprob`] is NaN then).
    pub logprobs: bool,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, no truncation, no penalties, seed 0.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
            top_logprobs: 0,
            logprobs: true,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-6 || self.top_k == 1
    }
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability (see the module docs for which distribution).
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens with their log-probabilities, most likely first.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// A request's sampler: its parameters and its own RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one position's logits. `previous_tokens` are the tokens the penalties
    /// look at (the caller decides: generated tokens only, or prompt + generated).
    pub fn sample(&mut self, logits: &[f32], previous_tokens: &[u32]) -> Sampled {
        let p = &self.params;
        let n = logits.len();
        if n == 0 {
            return Sampled {
                token: 0,
                logprob: 0.0,
                top_logprobs: Vec::new(),
            };
        }
        let penalise =
            p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        // copy the logits only when a bias or penalty changes them
        let mut owned = Vec::new();
        let logits: &[f32] = if p.logit_bias.is_empty() && (!penalise || previous_tokens.is_empty())
        {
            logits
        } else {
            owned.extend_from_slice(logits);
            for &(id, bias) in &p.logit_bias {
                if let Some(l) = owned.get_mut(id as usize) {
                    *l += bias;
                }
            }
            if penalise && !previous_tokens.is_empty() {
                let mut counts: std::collections::HashMap<u32, u32> = Default::default();
                for &t in previous_tokens {
                    *counts.entry(t).or_default() += 1;
                }
                for (&t, &c) in &counts {
                    if let Some(l) = owned.get_mut(t as usize) {
                        if p.repetition_penalty != 1.0 {
                            *l = if *l > 0.0 {
                                *l / p.repetition_penalty
                            } else {
                                *l * p.repetition_penalty
                            };
                        }
                        *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                    }
                }
            }
            &owned
        };
        let log_z = if p.logprobs || p.top_logprobs > 0 {
            log_sum_exp(logits)
        } else {
            f32::NAN
        };
        let logprob = |l: f32| l - log_z;

        let token = if p.is_greedy() {
            argmax(logits)
        } else {
            draw(p, &mut self.rng, logits)
        };
        let top_logprobs = if p.top_logprobs > 0 {
            top_indices(logits, p.top_logprobs)
                .into_iter()
                .map(|i| (i as u32, logprob(logits[i])))
                .collect()
        } else {
            Vec::new()
        };
        Sampled {
            token,
            logprob: logprob(logits[token as usize]),
            top_logprobs,
        }
    }
}

/// Temperature, top-k, top-p and min-p, then one draw from what remains.
fn draw(p: &SamplingParams, rng: &mut StdRng, logits: &[f32]) -> u32 {
    {
        let inv_t = 1.0 / p.temperature;
        // candidates, most likely first
        let mut cand: Vec<(u32, f32)> = if p.top_k > 0 && p.top_k < logits.len() {
            top_indices(logits, p.top_k)
                .into_iter()
                .map(|i| (i as u32, logits[i] * inv_t))
                .collect()
        } else {
            let mut c: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t))
                .collect();
            c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            c
        };
        let max = cand.first().map_or(0.0, |c| c.1);
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        cand.truncate(keep);
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        let mut r = rng.random::<f32>() * total;
        for (c, q) in cand.iter().zip(&probs) {
            if r < *q {
                return c.0;
            }
            r -= q;
        }
        cand.last().map_or(0, |c| c.0)
    }
}

/// Index of the largest value (lowest index on ties; NaN never wins).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in xs.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + xs.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// Indices of the `k` largest values, largest first (lower index first on ties).
fn top_indices(xs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    let cmp = |a: &usize, b: &usize| xs[*b].total_cmp(&xs[*a]).then(a.cmp(b));
    let k = k.min(xs.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_the_largest_logit_and_the_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]).token, 1);
    }

    #[test]
    fn same_seed_gives_the_same_tokens_and_different_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| p.seed = seed));
            (0..40)
                .map(|_| s.sample(&logits, &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(|p| p.top_k = 1));
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 2.0, 0.5], &[]).token, 1);
        }
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let mut s = Sampler::new(params(|p| {
            p.top_k = 2;
            p.temperature = 5.0;
        }));
        for _ in 0..200 {
            let t = s.sample(&[1.0, 2.0, 0.5, 1.9], &[]).token;
            assert!(t == 1 || t == 3, "got {t}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let mut s = Sampler::new(params(|p| p.top_p = 0.7));
        for _ in 0..300 {
            assert!(s.sample(&logits, &[]).token <= 1);
        }
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        let logits = [5.0f32, 4.9, 0.0, 0.0];
        let mut s = Sampler::new(params(|p| p.min_p = 0.5));
        for _ in 0..300 {
            assert!(s.sample(&logits, &[]).token <= 1);
        }
    }

    #[test]
    fn low_temperature_concentrates_on_the_best() {
        let mut s = Sampler::new(params(|p| p.temperature = 0.01));
        for _ in 0..100 {
            assert_eq!(s.sample(&[1.0, 1.5, 1.2], &[]).token, 1);
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::new(params(|p| p.seed = 1));
        let ones = (0..4000)
            .filter(|_| s.sample(&logits, &[]).token == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        }));
        // token 0 (3.0 → 1.5) loses to token 1 (2.0)
        assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0]).token, 1);
        // negative logit gets more negative: -1 → -2, still last
        let out = s.sample(&[-1.0, -1.5], &[0]);
        assert_eq!(out.token, 1);
    }

    #[test]
    fn presence_and_frequency_penalties_subtract_per_token_and_per_occurrence() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.5;
        }));
        // token 0 seen twice: 3.0 - 0.5 - 1.0 = 1.5 < 2.0
        assert_eq!(s.sample(&[3.0, 2.0], &[0, 0]).token, 1);
        // token 0 seen once: 3.0 - 1.0 = 2.0 ties with token 1 → lowest id
        assert_eq!(s.sample(&[3.0, 2.0], &[0]).token, 0);
    }

    #[test]
    fn logit_bias_can_force_or_ban_a_token() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(2, 100.0), (99, 5.0)];
        }));
        assert_eq!(s.sample(&[1.0, 2.0, 0.0], &[]).token, 2);
        let mut s = Sampler::new(params(|p| p.logit_bias = vec![(1, -1e9)]));
        for _ in 0..100 {
            assert_ne!(s.sample(&[1.0, 5.0, 1.0], &[]).token, 1);
        }
    }

    #[test]
    fn logprobs_are_log_softmax_and_top_logprobs_are_sorted() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.top_logprobs = 2;
        }));
        let out = s.sample(&[0.0, (3.0f32).ln(), f32::NEG_INFINITY], &[]);
        assert_eq!(out.token, 1);
        assert!((out.logprob - 0.75f32.ln()).abs() < 1e-6);
        assert_eq!(out.top_logprobs.len(), 2);
        assert_eq!(out.top_logprobs[0].0, 1);
        assert_eq!(out.top_logprobs[1].0, 0);
        assert!((out.top_logprobs[1].1 - 0.25f32.ln()).abs() < 1e-6);
    }
}
