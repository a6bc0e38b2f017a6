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
