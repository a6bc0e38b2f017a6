//! No leaks: many streamed requests, about half abandoned mid-stream, leave 0 KV blocks in use and an empty
//! queue (read from /metrics). `LLAMA_LEAK_REQUESTS` overrides the count (default 1000).

mod serve_common;

use serve_common::Server;

#[test]
fn requests_with_random_disconnects_leave_no_blocks_in_use_and_an_empty_queue() {
    let n = std::env::var("LLAMA_LEAK_REQUESTS").unwrap_or_else(|_| "1000".into());
    let server = Server::start(&["--max-batch-size", "16"]);
    server.py("leaks.py", &[&n]);
}

/// The same at tensor-parallel size 3 (fewer requests: `LLAMA_LEAK_REQUESTS_TP`, default 200). The ranks
/// share one block table, so 0 blocks in use is 0 on every rank.
#[test]
fn at_tensor_parallel_size_3_disconnects_leave_no_blocks_in_use_and_an_empty_queue() {
    let n = std::env::var("LLAMA_LEAK_REQUESTS_TP").unwrap_or_else(|_| "200".into());
    let server = Server::start(&["--max-batch-size", "16", "--tensor-parallel-size", "3"]);
    let (_, metrics) = serve_common::http_get(server.port, "/metrics").expect("/metrics");
    let want = format!(
        "{}{{model_name=\"{}\"}} 3",
        llama_contract::metrics::TENSOR_PARALLEL_SIZE,
        serve_common::NAME
    );
    assert!(metrics.contains(&want), "/metrics lacks {want}:\n{metrics}");
    server.py("leaks.py", &[&n]);
}

/// Soak: `LLAMA_SOAK_REQUESTS` (default 10,000) requests mixing streams, non-streams, disconnects of both,
/// bad inputs and tokenize calls end with 0 KV blocks used, an empty queue, and resident memory flat.
#[test]
fn a_soak_of_mixed_traffic_leaves_no_blocks_an_empty_queue_and_flat_memory() {
    let n = std::env::var("LLAMA_SOAK_REQUESTS").unwrap_or_else(|_| "10000".into());
    let server = Server::start(&["--max-batch-size", "16"]);
    let pid = server.pid().to_string();
    server.py("soak.py", &[&n, &pid]);
}
