//! llama-server: GGUF Llama inference on candle-core with a paged KV cache, continuous batching and an
//! OpenAI-compatible HTTP API.

pub mod batch;
