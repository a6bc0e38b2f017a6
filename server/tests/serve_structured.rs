//! Structured outputs on SmolLM2 through the official `openai` Python client: twenty JSON schemas, Pydantic
//! `parse()`, JSON mode, vLLM's `guided_*`, streaming, `n > 1`, batch invariance and bad constraints, each
//! answer checked by the independent `jsonschema` validator (tests/py/structured.py).

mod serve_common;

use serve_common::{NAME, Server, http_get};

#[test]
fn structured_outputs_validate_against_their_schemas_through_the_openai_client() {
    let server = Server::start(&[]);
    server.py("structured.py", &[NAME]);
    let (code, metrics) = http_get(server.port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("llama_guided_requests_total{kind=\"json_schema\""),
        "constrained requests are counted"
    );
    assert!(
        metrics.contains("llama_guided_mask_seconds_count"),
        "mask time is measured"
    );
}

/// Preemption recomputes a constrained sequence's KV cache but keeps its parser: with a KV cache so small that
/// 16 concurrent requests force preemption, a constrained request and a required tool call give the tokens
/// they give alone.
#[test]
fn constrained_outputs_survive_preemption_unchanged() {
    let server = Server::start(&["--kv-cache-memory", "8847360", "--max-seq-len", "256"]);
    server.py("structured.py", &[NAME, "preempt"]);
    let (_, metrics) = http_get(server.port, "/metrics").expect("metrics");
    let preempted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("llama_preemptions_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(preempted > 0.0, "the tiny cache should force preemption");
}
