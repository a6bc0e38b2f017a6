//! The official `openai` Python client against `llama-server serve` on SmolLM2: chat, completion, streaming,
//! n=2, stop strings, usage, logprobs; greedy output equals the engine's own `generate`. Then a table of bad
//! inputs, each with the right 4xx, and the server still serving.

mod serve_common;

use serve_common::{NAME, Server, generate, http_get, http_get_with};

#[test]
fn openai_client_gets_the_engines_greedy_answers_and_bad_inputs_get_the_right_4xx() {
    let completion = generate("The capital of France is", 16, false);
    let chat = generate("What is the capital of France?", 24, true);
    let server = Server::start(&[]);
    server.py("openai_client.py", &[NAME, &completion, &chat]);
    server.py("bad_inputs.py", &[NAME, "512"]);
    let (code, metrics) = http_get(server.port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for name in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("llama_request_errors_total{code=\"invalid_value\""),
        "errors are counted"
    );
}

#[test]
fn api_key_guards_v1_but_not_health_ready_or_metrics() {
    let server = Server::start(&["--api-key", "sekret"]);
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(http_get(server.port, path).expect("get").0, 200, "{path}");
    }
    assert_eq!(http_get(server.port, "/v1/models").expect("get").0, 401);
    let (code, body) =
        http_get_with(server.port, "/v1/models", "Authorization: Bearer sekret").expect("get");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        http_get_with(server.port, "/v1/models", "Authorization: Bearer wrong")
            .expect("get")
            .0,
        401
    );
}
