//! llama-server: GGUF Llama inference on candle-core with a paged KV cache, continuous batching and an
//! OpenAI-compatible HTTP API.

pub mod api;
pub mod app;
pub mod batch;
pub mod bench_serve;
pub mod block_manager;
pub mod cgroup;
pub mod chat;
pub mod cli;
pub mod comm;
pub mod device;
pub mod engine;
pub mod fetch;
pub mod gguf;
pub mod guided;
pub mod kv_cache;
pub mod metrics;
pub mod model;
pub mod sampler;
pub mod scheduler;
pub mod serve;
pub mod tokenizer;
