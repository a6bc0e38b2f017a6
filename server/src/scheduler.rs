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
mod tests;
