//! The real [`StepModel`]: the Llama model and its paged KV cache.

use crate::batch::BatchInput;
use crate::kv_cache::KvCache;
use crate::model::Model;

use super::StepModel;

/// The model plus the KV cache its steps read and write (owned by the engine thread through this).
#[derive(Debug)]
pub struct ModelRunner {
    pub model: Model,
    pub cache: KvCache,
}

impl StepModel for ModelRunner {
    fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
        self.model.forward(batch, &mut self.cache)?.to_vec2::<f32>()
    }
}

/// Runs one 2-token step through a freshly loaded model (before it is reported ready) and checks the logits:
/// one row of `vocab` finite values. Corrupt weights (NaN scales, say) or a file whose header does not
/// describe its data fail here, with a message, instead of serving garbage or 500s.
pub fn self_check(
    model: &mut dyn StepModel,
    bos: u32,
    vocab: usize,
    block_size: usize,
) -> Result<(), String> {
    let tokens = [bos, bos];
    let batch = crate::batch::BatchInput::single(&tokens, 0, block_size.max(1));
    let logits = model
        .step(&batch)
        .map_err(|e| format!("the self-check forward pass failed: {e}"))?;
    let [row] = logits.as_slice() else {
        return Err(format!(
            "the self-check forward pass returned {} logit rows instead of 1",
            logits.len()
        ));
    };
    if row.len() != vocab {
        return Err(format!(
            "the self-check forward pass returned {} logits for a vocabulary of {vocab}",
            row.len()
        ));
    }
    let bad = row.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(format!(
            "the self-check forward pass gave {bad} non-finite logits of {vocab}: the weights are corrupt or \
             do not match what the file's header declares"
        ));
    }
    Ok(())
}
