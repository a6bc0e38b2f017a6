//! 429 with Retry-After when the waiting queue is full; SIGTERM drain: readiness 503 at once, new requests 503,
//! the in-flight stream completes, exit 0.

mod serve_common;

use std::time::Duration;

use serve_common::Server;

#[test]
fn requests_beyond_the_queue_bound_get_429_with_retry_after() {
    let server = Server::start(&["--max-batch-size", "1", "--max-queue", "2"]);
    server.py("queue_drain.py", &["queue"]);
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let mut server = Server::start(&[]);
    server.py_sigterm("queue_drain.py", &["drain"]);
    let code = server.wait(Duration::from_secs(60));
    assert!(code.success(), "server exit {code}:\n{}", server.log_tail());
}
