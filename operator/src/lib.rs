//! llama-operator: turns `LlamaDeployment` objects into serving pods, a Service and status that explains
//! itself. Pure decisions (`hardware`, `plan`, `status`, `leader::decide`) are separate from the thin I/O
//! (`controller`, `leader`).

pub mod autoscale;
pub mod controller;
pub mod crd;
pub mod hardware;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod status;
