//! The findings of the abuse probes (issue 13), each against a real `llama-server serve`: clients that leave
//! stop their work, no request runs unbounded, probes never starve, fields are honoured or refused, the HTTP
//! surface answers in the OpenAI shape, special tokens are parsed where the caller owns the text only.
//! The probes themselves are in `tests/py/abuse.py`.

mod serve_common;

use std::time::Duration;

use serve_common::Server;

#[test]
fn the_abuse_probes_pass_against_one_server() {
    let server = Server::start(&[
        "--max-seq-len",
        "2048",
        "--kv-cache-memory",
        "200000000",
        "--default-max-tokens",
        "7",
    ]);
    for probe in [
        "disconnect",
        "health",
        "logit-bias",
        "unsupported",
        "http",
        "special",
        "seeds",
    ] {
        server.py("abuse.py", &[probe]);
    }
    server.py("abuse.py", &["default-cap", "7"]);
}

#[test]
fn the_api_key_scheme_is_case_insensitive_and_a_wrong_key_is_refused() {
    let key_file = std::env::temp_dir().join(format!("llama-key-{}", std::process::id()));
    std::fs::write(&key_file, "s3cret-key\n").expect("key file");
    let server = Server::start(&["--api-key-file", key_file.to_str().expect("utf-8")]);
    server.py("abuse.py", &["auth", "s3cret-key"]);
    let _ = std::fs::remove_file(key_file);
}

/// SIGTERM with requests that cannot finish within --drain-timeout: they get errors (the stream an error event
/// and [DONE]), the process exits within the timeout (Kubernetes' grace period is above it), and the exit
/// code says requests were cut.
#[test]
fn the_drain_deadline_is_kept_and_cut_requests_get_errors() {
    let mut server = Server::start(&["--drain-timeout", "3"]);
    let (sent, _) = server.py_sigterm("abuse.py", &["drain-deadline"]);
    let code = server.wait(Duration::from_secs(30));
    let took = sent.elapsed();
    assert!(
        took <= Duration::from_millis(3300),
        "shutdown took {took:?} with --drain-timeout 3"
    );
    assert_eq!(
        code.code(),
        Some(1),
        "requests were cut: exit 1\n{}",
        server.log_tail()
    );
    assert!(
        server.log_text().contains("cut off by the drain timeout"),
        "{}",
        server.log_tail()
    );
}
