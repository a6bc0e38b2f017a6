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
