//! The findings of the abuse probes (issue 13), each against a real `llama-server serve`: clients that leave
//! stop their work, no request runs unbounded, probes never starve, fields are honoured or refused, the HTTP
//! surface answers in the OpenAI shape, special tokens are parsed where the caller owns the text only.
//! The probes themselves are in `tests/py/abuse.py`.

mod serve_common;

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
