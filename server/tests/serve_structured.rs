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
