//! The continuous-batching scheduler: pure arithmetic over token counts and blocks.
//!
//! Every request carries `num_computed_tokens` (K/V already in the cache) and `num_tokens` (prompt + output so
//! far). A step grants each scheduled request a count of new tokens, within a token budget
//! (`max_num_batched_tokens`) and a sequence cap (`max_batch_size`). Prefill, chunked prefill and decode are the
//! same arithmetic: a request is granted `min(num_tokens - num_computed_tokens, budget left)`.
//!
//! A step is `schedule` → (the engine runs the model and samples) → `update`. Running requests are served first,
//! oldest first; when the block pool cannot grow one, the newest running request is preempted (its blocks are
//! dropped and it returns to the front of the waiting queue to be recomputed). Waiting requests are admitted only
//! in steps without preemption.

use std::collections::VecDeque;

use crate::batch::{BatchInput, SeqInput};
use crate::block_manager::{BlockManager, BlockTable};

pub type RequestId = u64;

/// Limits of one step and of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most new tokens in one step (all sequences together).
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_batch_size: usize,
    /// Most tokens (prompt + output) in one sequence.
    pub max_seq_len: usize,
}

/// What the engine hands the scheduler for one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Most output tokens.
    pub max_tokens: usize,
    /// Sampling one of these ends the sequence with [`FinishReason::Stop`] (EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or `max_seq_len` reached.
    Length,
    /// The client went away or asked to stop.
    Abort,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string, also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// Why a request cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error(
        "prompt has {prompt} tokens; it must leave room for output within max_seq_len {max_seq_len}"
    )]
    PromptTooLong { prompt: usize, max_seq_len: usize },
    #[error("the request needs {needed} KV blocks but the cache has only {total}")]
    TooLargeForCache { needed: usize, total: usize },
    #[error("request id {0} is already known")]
    DuplicateId(RequestId),
}

#[derive(Debug)]
struct Seq {
    id: RequestId,
    tokens: Vec<u32>,
    num_prompt_tokens: usize,
    num_computed_tokens: usize,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
    /// `None` while waiting without blocks.
    table: Option<BlockTable>,
}

impl Seq {
    fn num_tokens(&self) -> usize {
        self.tokens.len()
    }
    fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }
}

/// One sequence's grant in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// Tokens already computed before this step (the position of the first granted token).
    pub num_computed_tokens: usize,
    /// New tokens granted this step.
    pub num_new_tokens: usize,
    /// Whether this step finishes the sequence's pending tokens, so a token is sampled from its logits.
    pub samples: bool,
}

/// The decision of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Granted sequences, in batch order.
    pub scheduled: Vec<ScheduledSeq>,
    /// Requests preempted this step (newest first); they wait to be recomputed.
    pub preempted: Vec<RequestId>,
    /// The flat model input for `scheduled`.
    pub batch: BatchInput,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    pub fn num_batched_tokens(&self) -> usize {
        self.batch.num_tokens()
    }

    /// Ids of the sequences that sample this step, in the order of the model's logits rows.
    pub fn sampling_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.scheduled.iter().filter(|s| s.samples).map(|s| s.id)
    }
}

/// One sampled token after `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqUpdate {
    pub id: RequestId,
    pub token: u32,
    /// Set when this token ended the sequence (its blocks are already freed).
    pub finish: Option<FinishReason>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<Seq>,
    /// Admission order: oldest first, newest last (the preemption victim).
    running: Vec<Seq>,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Self {
        Self {
            config,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    fn contains(&self, id: RequestId) -> bool {
        self.waiting
            .iter()
            .chain(self.running.iter())
            .any(|s| s.id == id)
    }

    /// Queues a request. Rejects one that could never run (empty, too long, or larger than the whole cache).
    pub fn add(&mut self, req: SeqRequest) -> Result<(), AddError> {
        if req.prompt.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if req.prompt.len() >= self.config.max_seq_len {
            return Err(AddError::PromptTooLong {
                prompt: req.prompt.len(),
                max_seq_len: self.config.max_seq_len,
            });
        }
        // The longest the sequence can get: it must fit in the pool on its own, or it could never finish.
        let longest = (req.prompt.len() + req.max_tokens).min(self.config.max_seq_len);
        let needed = self.blocks.blocks_for(longest);
        if needed > self.blocks.num_blocks() {
            return Err(AddError::TooLargeForCache {
                needed,
                total: self.blocks.num_blocks(),
            });
        }
        if self.contains(req.id) {
            return Err(AddError::DuplicateId(req.id));
        }
        self.waiting.push_back(Seq {
            id: req.id,
            num_prompt_tokens: req.prompt.len(),
            tokens: req.prompt,
            num_computed_tokens: 0,
            max_tokens: req.max_tokens,
            stop_token_ids: req.stop_token_ids,
            table: None,
        });
        Ok(())
    }

    /// Removes a request wherever it is; its blocks are freed. Returns whether it was known.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.config.max_num_batched_tokens;
        let mut granted: Vec<(RequestId, usize)> = Vec::new();
        let mut preempted = Vec::new();

        // 1. Running requests, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let n = (seq.num_tokens() - seq.num_computed_tokens).min(budget);
            let want = seq.num_computed_tokens + n;
            loop {
                let seq = &mut self.running[i];
                let table = seq.table.get_or_insert_with(BlockTable::default);
                if self.blocks.allocate(table, want).is_some() {
                    granted.push((seq.id, n));
                    budget -= n;
                    i += 1;
                    break;
                }
                // Out of blocks: preempt the newest running request (possibly this one).
                let Some(mut victim) = self.running.pop() else {
                    break;
                };
                victim.table = None;
                victim.num_computed_tokens = 0;
                preempted.push(victim.id);
                self.num_preemptions += 1;
                self.waiting.push_front(victim);
                if i >= self.running.len() {
                    break;
                }
            }
        }

        // 2. Waiting requests, in order, only if nothing was preempted.
        while preempted.is_empty() && budget > 0 && self.running.len() < self.config.max_batch_size
        {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            let (mut table, cached) = self.blocks.start_sequence(&seq.tokens);
            let n = (seq.tokens.len() - cached).min(budget);
            if self.blocks.allocate(&mut table, cached + n).is_none() {
                break; // `table` drops here, releasing any prefix hits
            }
            self.blocks.record_prefix_lookup(seq.tokens.len(), cached);
            seq.num_computed_tokens = cached;
            seq.table = Some(table);
            granted.push((seq.id, n));
            budget -= n;
            if let Some(seq) = self.waiting.pop_front() {
                self.running.push(seq);
            }
        }

        self.build_output(granted, preempted)
    }

    fn build_output(
        &self,
        granted: Vec<(RequestId, usize)>,
        preempted: Vec<RequestId>,
    ) -> SchedulerOutput {
        let block_size = self.blocks.block_size();
        let mut out = SchedulerOutput {
            preempted,
            ..Default::default()
        };
        for (id, n) in granted {
            let Some(seq) = self.running.iter().find(|s| s.id == id) else {
                continue;
            };
            let Some(table) = seq.table.as_ref() else {
                continue;
            };
            let start = seq.num_computed_tokens;
            let context_len = start + n;
            let samples = context_len == seq.num_tokens();
            let b = &mut out.batch;
            b.seqs.push(SeqInput {
                start: b.token_ids.len(),
                len: n,
                context_len,
                block_table: table
                    .ids()
                    .into_iter()
                    .take(context_len.div_ceil(block_size))
                    .collect(),
                wants_logits: samples,
            });
            for pos in start..context_len {
                b.token_ids.push(seq.tokens[pos]);
                b.positions.push(pos as u32);
                // The table covers `context_len` tokens: allocation succeeded for exactly that.
                b.slot_mapping
                    .push(table.slot(pos, block_size).unwrap_or(u32::MAX));
            }
            out.scheduled.push(ScheduledSeq {
                id,
                num_computed_tokens: start,
                num_new_tokens: n,
                samples,
            });
        }
        out
    }

    /// Applies a step's results: granted tokens become computed, `sampled` (one token per sampling sequence, in
    /// [`SchedulerOutput::sampling_ids`] order) is appended, stop tokens and length limits finish sequences.
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[u32]) -> Vec<SeqUpdate> {
        let mut updates = Vec::new();
        let mut next_sample = sampled.iter();
        for s in &out.scheduled {
            let token = if s.samples {
                next_sample.next().copied()
            } else {
                None
            };
            let Some(i) = self.running.iter().position(|q| q.id == s.id) else {
                continue;
            };
            let seq = &mut self.running[i];
            seq.num_computed_tokens = s.num_computed_tokens + s.num_new_tokens;
            if let Some(table) = seq.table.as_mut() {
                self.blocks
                    .commit(table, &seq.tokens, seq.num_computed_tokens);
            }
            let Some(token) = token else { continue };
            seq.tokens.push(token);
            let finish = if seq.stop_token_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if seq.num_output_tokens() >= seq.max_tokens
                || seq.num_tokens() >= self.config.max_seq_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            if finish.is_some() {
                self.running.remove(i);
            }
            updates.push(SeqUpdate {
                id: s.id,
                token,
                finish,
            });
        }
        updates
    }

    /// KV slots held by running sequences and how many of them hold (or are about to hold) a token:
    /// `allocated - filled` is the paging waste (the unused tail of each sequence's last block). Blocks shared
    /// through the prefix cache count once per sequence.
    pub fn kv_slot_usage(&self) -> (usize, usize) {
        let bs = self.blocks.block_size();
        self.running.iter().fold((0, 0), |(alloc, filled), s| {
            let slots = s.table.as_ref().map_or(0, |t| t.len() * bs);
            (alloc + slots, filled + s.num_tokens().min(slots))
        })
    }

    /// Output tokens of a known request so far.
    pub fn output_tokens(&self, id: RequestId) -> Option<&[u32]> {
        self.waiting
            .iter()
            .chain(self.running.iter())
            .find(|s| s.id == id)
            .map(|s| &s.tokens[s.num_prompt_tokens..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(num_blocks: usize, block_size: usize, budget: usize, max_batch: usize) -> Scheduler {
        // As `serve` does: a lone sequence always fits in the pool.
        let max_seq_len = (num_blocks * block_size).min(64);
        let config = SchedulerConfig {
            max_num_batched_tokens: budget,
            max_batch_size: max_batch,
            max_seq_len,
        };
        Scheduler::new(config, BlockManager::new(num_blocks, block_size, false))
    }

    fn req(id: RequestId, prompt_len: usize, max_tokens: usize) -> SeqRequest {
        SeqRequest {
            id,
            prompt: (0..prompt_len as u32).map(|t| t + 10 * id as u32).collect(),
            max_tokens,
            stop_token_ids: vec![2],
        }
    }

    fn grants(out: &SchedulerOutput) -> Vec<(RequestId, usize)> {
        out.scheduled
            .iter()
            .map(|s| (s.id, s.num_new_tokens))
            .collect()
    }

    /// Runs one step feeding token 5 to every sampling sequence.
    fn step(s: &mut Scheduler) -> SchedulerOutput {
        let out = s.schedule();
        let n = out.sampling_ids().count();
        s.update(&out, &vec![5; n]);
        out
    }

    #[test]
    fn a_short_prompt_is_prefilled_in_one_step_then_decodes_one_token_per_step() {
        let mut s = sched(8, 4, 16, 4);
        s.add(req(1, 6, 3)).unwrap();
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 6)]);
        assert_eq!(out.batch.positions, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(out.batch.slot_mapping, vec![0, 1, 2, 3, 4, 5]);
        assert!(out.batch.seqs[0].wants_logits);
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 1)]);
        assert_eq!(out.batch.token_ids, vec![5]);
        assert_eq!(out.batch.positions, vec![6]);
        assert_eq!(out.batch.seqs[0].context_len, 7);
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_within_the_token_budget() {
        let mut s = sched(8, 4, 5, 4);
        s.add(req(1, 12, 2)).unwrap();
        let a = step(&mut s);
        assert_eq!(grants(&a), vec![(1, 5)]);
        assert!(
            !a.scheduled[0].samples,
            "no token is sampled from a non-final chunk"
        );
        let b = step(&mut s);
        assert_eq!(grants(&b), vec![(1, 5)]);
        assert_eq!(b.batch.positions[0], 5);
        let c = step(&mut s);
        assert_eq!(grants(&c), vec![(1, 2)]);
        assert!(c.scheduled[0].samples);
        assert_eq!(s.output_tokens(1), Some(&[5][..]));
    }

    #[test]
    fn decodes_come_first_and_the_rest_of_the_budget_admits_waiting_prompts() {
        let mut s = sched(16, 4, 8, 4);
        s.add(req(1, 4, 10)).unwrap();
        step(&mut s);
        s.add(req(2, 20, 10)).unwrap();
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 1), (2, 7)]);
        assert_eq!(out.batch.seqs[1].start, 1);
        assert_eq!(out.batch.seqs[1].block_table.len(), 2);
    }

    #[test]
    fn no_more_than_max_batch_size_sequences_run_at_once() {
        let mut s = sched(16, 4, 100, 2);
        for id in 1..=3 {
            s.add(req(id, 3, 5)).unwrap();
        }
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 3), (2, 3)]);
        assert_eq!(s.num_waiting(), 1);
    }

    #[test]
    fn a_waiting_request_stays_queued_when_its_blocks_do_not_fit() {
        let mut s = sched(3, 4, 100, 8);
        s.add(req(1, 8, 4)).unwrap();
        s.add(req(2, 8, 4)).unwrap();
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 8)]);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(s.blocks().num_used(), 2);
    }

    #[test]
    fn running_request_is_preempted_when_blocks_run_out_newest_first() {
        // 4 blocks of 2: two sequences of 3 prompt tokens use 2 blocks each; the first decode that needs a
        // third block for sequence 1 evicts sequence 2 (the newest).
        let mut s = sched(4, 2, 100, 8);
        s.add(req(1, 3, 10)).unwrap();
        s.add(req(2, 3, 10)).unwrap();
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(1, 3), (2, 3)]);
        let out = step(&mut s); // positions 3: both still fit in their second block
        assert_eq!(grants(&out), vec![(1, 1), (2, 1)]);
        let out = step(&mut s); // position 4 needs a third block each
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(grants(&out), vec![(1, 1)]);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(s.num_preemptions(), 1);
        // The preempted request keeps its output and is recomputed from scratch when it is readmitted.
        assert_eq!(s.output_tokens(2), Some(&[5, 5][..]));
    }

    #[test]
    fn a_preempted_request_is_recomputed_with_its_output_once_blocks_free_up() {
        let mut s = sched(4, 2, 100, 8);
        s.add(req(1, 3, 10)).unwrap();
        s.add(req(2, 3, 10)).unwrap();
        step(&mut s);
        step(&mut s);
        let out = step(&mut s);
        assert_eq!(out.preempted, vec![2]);
        s.abort(1);
        let out = step(&mut s);
        assert_eq!(
            grants(&out),
            vec![(2, 5)],
            "prompt 3 + 2 outputs recomputed"
        );
        assert_eq!(out.batch.positions, vec![0, 1, 2, 3, 4]);
        assert!(out.scheduled[0].samples);
    }

    #[test]
    fn the_newest_request_preempts_itself_when_it_cannot_grow() {
        let mut s = sched(3, 2, 100, 8);
        s.add(req(1, 3, 10)).unwrap();
        s.add(req(2, 2, 10)).unwrap();
        step(&mut s); // 1 holds 2 blocks, 2 holds 1 block; both sampled a token
        let out = step(&mut s); // 2 needs a second block: none free, and it is the newest
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(grants(&out), vec![(1, 1)]);
        assert_eq!(s.blocks().num_used(), 2);
    }

    #[test]
    fn waiting_requests_are_not_admitted_in_a_step_that_preempted() {
        let mut s = sched(4, 2, 100, 8);
        s.add(req(1, 3, 10)).unwrap();
        s.add(req(2, 3, 10)).unwrap();
        step(&mut s);
        step(&mut s);
        s.add(req(3, 1, 1)).unwrap();
        let out = step(&mut s);
        assert_eq!(out.preempted, vec![2]);
        assert!(out.scheduled.iter().all(|g| g.id == 1));
    }

    #[test]
    fn a_stop_token_finishes_the_sequence_and_frees_its_blocks() {
        let mut s = sched(8, 4, 16, 4);
        s.add(req(1, 5, 10)).unwrap();
        let out = s.schedule();
        let ups = s.update(&out, &[2]);
        assert_eq!(
            ups,
            vec![SeqUpdate {
                id: 1,
                token: 2,
                finish: Some(FinishReason::Stop)
            }]
        );
        assert_eq!(s.num_running(), 0);
        assert_eq!(s.blocks().num_used(), 0);
    }

    #[test]
    fn max_tokens_and_max_seq_len_finish_with_length() {
        let mut s = sched(32, 4, 100, 4);
        s.add(req(1, 4, 2)).unwrap();
        assert_eq!(step(&mut s).scheduled.len(), 1);
        let out = s.schedule();
        assert_eq!(s.update(&out, &[7])[0].finish, Some(FinishReason::Length));
        // max_seq_len 64: a 62-token prompt can only produce 2 tokens whatever max_tokens says.
        s.add(req(2, 62, 100)).unwrap();
        let out = s.schedule();
        assert_eq!(s.update(&out, &[7])[0].finish, None);
        let out = s.schedule();
        assert_eq!(s.update(&out, &[7])[0].finish, Some(FinishReason::Length));
        assert_eq!(s.blocks().num_used(), 0);
    }

    #[test]
    fn waste_is_the_unused_tail_of_each_last_block() {
        let mut s = sched(16, 4, 100, 4);
        s.add(req(1, 5, 10)).unwrap(); // 2 blocks = 8 slots for 5 (+1 sampled) tokens
        s.add(req(2, 8, 10)).unwrap(); // 2 blocks = 8 slots for 8 (+1 sampled) tokens
        step(&mut s);
        // After the step each holds prompt + 1 sampled token: 6 of 8 and 8 of 8 (9th not yet allocated).
        assert_eq!(s.kv_slot_usage(), (16, 14));
    }

    #[test]
    fn requests_that_could_never_run_are_rejected_up_front() {
        let config = SchedulerConfig {
            max_num_batched_tokens: 100,
            max_batch_size: 4,
            max_seq_len: 64,
        };
        let mut s = Scheduler::new(config, BlockManager::new(4, 4, false));
        assert_eq!(s.add(req(1, 0, 1)), Err(AddError::EmptyPrompt));
        assert_eq!(
            s.add(req(1, 64, 1)),
            Err(AddError::PromptTooLong {
                prompt: 64,
                max_seq_len: 64
            })
        );
        assert_eq!(
            s.add(req(1, 10, 10)),
            Err(AddError::TooLargeForCache {
                needed: 5,
                total: 4
            })
        );
        s.add(req(1, 10, 6)).unwrap();
        assert_eq!(s.add(req(1, 1, 1)), Err(AddError::DuplicateId(1)));
    }

    #[test]
    fn aborting_a_running_request_frees_its_blocks_at_once() {
        let mut s = sched(8, 4, 16, 4);
        s.add(req(1, 9, 10)).unwrap();
        s.add(req(2, 3, 10)).unwrap();
        step(&mut s);
        assert_eq!(s.blocks().num_used(), 4);
        assert!(s.abort(1));
        assert_eq!(s.blocks().num_used(), 1);
        assert!(s.abort(2));
        assert!(!s.abort(2));
        assert_eq!(s.blocks().num_used(), 0);
        assert!(!s.has_work());
    }

    #[test]
    fn a_second_request_with_the_same_prompt_skips_the_cached_prefix() {
        let config = SchedulerConfig {
            max_num_batched_tokens: 100,
            max_batch_size: 4,
            max_seq_len: 64,
        };
        let mut s = Scheduler::new(config, BlockManager::new(16, 4, true));
        s.add(req(1, 10, 1)).unwrap();
        step(&mut s);
        s.add(req(2, 10, 1)).unwrap();
        s.abort(2);
        s.add(SeqRequest {
            id: 3,
            ..req(1, 10, 1)
        })
        .unwrap();
        let out = step(&mut s);
        assert_eq!(grants(&out), vec![(3, 2)]);
        assert_eq!(out.batch.positions, vec![8, 9]);
        let st = s.blocks().stats();
        assert_eq!((st.prefix_query_tokens, st.prefix_hit_tokens), (20, 8));
    }

    #[test]
    fn random_workloads_finish_every_request_and_leave_the_pool_empty() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..10u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let config = SchedulerConfig {
                max_num_batched_tokens: 16,
                max_batch_size: 4,
                max_seq_len: 40,
            };
            let mut s = Scheduler::new(config, BlockManager::new(12, 4, seed % 2 == 0));
            let mut next_id = 0;
            let mut finished = 0;
            for _ in 0..2000 {
                if next_id < 50 && rng.random_bool(0.3) {
                    let len = rng.random_range(1..30);
                    let prompt = (0..len).map(|_| rng.random_range(3..6)).collect();
                    let max_tokens = rng.random_range(1..10);
                    s.add(SeqRequest {
                        id: next_id,
                        prompt,
                        max_tokens,
                        stop_token_ids: vec![2],
                    })
                    .unwrap();
                    next_id += 1;
                }
                let out = s.schedule();
                assert!(out.num_batched_tokens() <= 16);
                assert!(out.scheduled.len() <= 4);
                let sampled: Vec<u32> =
                    out.sampling_ids().map(|_| rng.random_range(2..6)).collect();
                finished += s
                    .update(&out, &sampled)
                    .iter()
                    .filter(|u| u.finish.is_some())
                    .count();
                let used = s.blocks().num_used();
                assert!(used <= 12);
                if !s.has_work() {
                    assert_eq!(used, 0);
                }
            }
            assert_eq!(finished, next_id as usize, "seed {seed}");
        }
    }
}
