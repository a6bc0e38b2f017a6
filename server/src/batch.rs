//! The contract between the scheduler (which decides *what* runs in a step) and the model (which runs it).
//!
//! One step is one flat batch: the tokens of every scheduled sequence laid end to end, no padding.
//! Prefill, chunked prefill and decode are the same shape: a sequence contributes `len` new tokens whose
//! keys/values are written to the cache slots in `slot_mapping`, and attends over `context_len` tokens
//! (cached + new) read through its `block_table`.

/// One sequence's share of a flat batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqInput {
    /// Offset of this sequence's first new token in [`BatchInput::token_ids`].
    pub start: usize,
    /// Number of new tokens this step (1 for decode, >1 for a (chunk of a) prompt).
    pub len: usize,
    /// Tokens attended to after this step's tokens are written: already-cached + `len`.
    pub context_len: usize,
    /// Physical block ids holding this sequence's KV, in logical order; covers `context_len` tokens.
    pub block_table: Vec<u32>,
    /// Whether the logits of this sequence's last new token are needed (false for a non-final prefill chunk).
    pub wants_logits: bool,
}

/// A whole step's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchInput {
    /// Token ids of all new tokens, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// Absolute position of each new token within its sequence.
    pub positions: Vec<u32>,
    /// Physical KV slot (`block_id * block_size + offset`) each new token's K/V is written to.
    pub slot_mapping: Vec<u32>,
    /// The sequences, in the order their tokens appear.
    pub seqs: Vec<SeqInput>,
}

impl BatchInput {
    /// Number of new tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// A batch for one sequence whose whole context lives in consecutive slots starting at block 0
    /// (used by the single-request CLI path and tests): `cached` tokens already in the cache, `new` tokens now.
    pub fn single(new: &[u32], cached: usize, block_size: usize) -> Self {
        let context_len = cached + new.len();
        let blocks = context_len.div_ceil(block_size);
        Self {
            token_ids: new.to_vec(),
            positions: (cached..context_len).map(|p| p as u32).collect(),
            slot_mapping: (cached..context_len).map(|p| p as u32).collect(),
            seqs: vec![SeqInput {
                start: 0,
                len: new.len(),
                context_len,
                block_table: (0..blocks as u32).collect(),
                wants_logits: true,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_sequence_batch_maps_positions_to_consecutive_slots() {
        let b = BatchInput::single(&[7, 8, 9], 14, 16);
        assert_eq!(b.positions, vec![14, 15, 16]);
        assert_eq!(b.slot_mapping, vec![14, 15, 16]);
        assert_eq!(b.seqs[0].block_table, vec![0, 1]);
        assert_eq!(b.seqs[0].context_len, 17);
    }
}
