//! llama-server: GGUF Llama inference on candle-core with a paged KV cache, continuous batching and an
//! OpenAI-compatible HTTP API.

pub mod batch;
pub mod chat;
pub mod cli;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod sampler;
pub mod tokenizer;
pub mod block_manager;
pub mod scheduler;
pub mod api;
pub mod engine;
pub mod metrics;
pub mod serve;
