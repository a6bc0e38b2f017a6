//! 429 with Retry-After when the waiting queue is full; SIGTERM drain: readiness 503 at once, new requests 503,
//! the in-flight stream completes, exit 0.

mod serve_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serve_common::{Server, python};

#[test]
fn requests_beyond_the_queue_bound_get_429_with_retry_after() {
    let server = Server::start(&["--max-batch-size", "1", "--max-queue", "2"]);
    server.py("queue_drain.py", &["queue"]);
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let mut server = Server::start(&[]);
    let dir = serve_common::package_dir().join("tests/py");
    let mut child = Command::new(python())
        .arg(dir.join("queue_drain.py"))
        .arg(&server.base)
        .arg("drain")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "READY-FOR-SIGTERM");
    server.sigterm();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let st = child.wait().expect("python exit");
    assert!(
        st.success(),
        "drain checks failed: {rest:?}\n{}",
        server.log_tail()
    );
    let code = server.wait(Duration::from_secs(60));
    assert!(code.success(), "server exit {code}:\n{}", server.log_tail());
}
