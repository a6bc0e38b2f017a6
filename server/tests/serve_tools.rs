//! Tool calling on SmolLM2 through the official `openai` Python client: `required` and named calls, streamed
//! and not, the round trip back through `tool` messages, `parallel_tool_calls`, `n > 1`, `auto`, and bad input
//! (tests/py/tools.py); every call's arguments checked by the independent `jsonschema` validator.

mod serve_common;

use serve_common::{NAME, Server, http_get};

#[test]
fn tool_calls_round_trip_through_the_openai_client() {
    let server = Server::start(&[]);
    server.py("tools.py", &[NAME]);
    let (code, metrics) = http_get(server.port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("llama_guided_requests_total{kind=\"tool_call\""),
        "required and named tool choices are constrained (and counted): {}",
        metrics
            .lines()
            .filter(|l| l.contains("guided"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
