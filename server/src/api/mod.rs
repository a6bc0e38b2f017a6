//! The HTTP API: wire types, the one validation step, the error type, SSE framing and the handlers.

pub mod conn;
pub mod error;
pub mod handlers;
pub mod keys;
pub mod middleware;
pub mod prep;
pub mod respond;
pub mod sse;
pub mod stop;
pub mod tools;
pub mod types;
pub mod validate;
pub mod wire;

pub use error::ApiError;
