//! `llama-server fetch` (the `url` model source's init container) against a real local HTTP server: a full
//! download with its checksum, a resumed one (HTTP Range), a bad checksum, an HTTP error, and a file already
//! in place. The reference digest comes from `sha256sum`, not from our own code.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A tiny HTTP/1.1 server for one file at `/model.gguf` with Range support; 404 elsewhere. Records the
/// `Range` header of each request.
struct FileServer {
    port: u16,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve_one(mut s: TcpStream, body: &[u8], ranges: &Mutex<Vec<Option<String>>>) {
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = Some(v.trim().to_owned());
        }
    }
    ranges.lock().expect("lock").push(range.clone());
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    if path != "/model.gguf" {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let head = match start {
        Some(st) if st < body.len() => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {st}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - st,
            body.len() - 1,
            body.len()
        ),
        _ => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    let from = match start {
        Some(st) if st < body.len() => st,
        _ => 0,
    };
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body[from..]);
}

impl FileServer {
    fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&ranges);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                serve_one(s, &body, &r);
            }
        });
        Self { port, ranges }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn body() -> Vec<u8> {
    // 3 MiB of non-repeating bytes: more than one read buffer, so resume and hashing cross chunk edges.
    (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

fn fetch(url: &str, sha: Option<&str>, out: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llama-server"));
    cmd.args(["fetch", "--url", url, "--out"])
        .arg(out)
        .args(["--retries", "1"]);
    if let Some(s) = sha {
        cmd.args(["--sha256", s]);
    }
    cmd.env_remove("MODEL_URL").env_remove("MODEL_SHA256");
    cmd.output().expect("run llama-server fetch")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fetch-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// The digest of the served bytes as `sha256sum` computes it.
fn reference_digest(body: &[u8], dir: &Path) -> String {
    let f = dir.join("reference");
    std::fs::write(&f, body).expect("write reference");
    sha256sum(&f)
}

#[test]
fn a_full_download_is_checked_and_published_atomically() {
    let body = body();
    let srv = FileServer::start(body.clone());
    let dir = tmp("full");
    let sha = reference_digest(&body, &dir);
    let out = dir.join("models/model.gguf");
    let o = fetch(&srv.url("/model.gguf"), Some(&sha), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert!(!dir.join("models/model.gguf.part").exists());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("sha256 ok"), "{log}");

    // Already present with the right digest: no request at all.
    let before = srv.ranges.lock().expect("lock").len();
    let o = fetch(&srv.url("/model.gguf"), Some(&sha), &out);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already present"));
    assert_eq!(srv.ranges.lock().expect("lock").len(), before);
}

#[test]
fn a_partial_download_resumes_with_a_range_request() {
    let body = body();
    let srv = FileServer::start(body.clone());
    let dir = tmp("resume");
    let sha = reference_digest(&body, &dir);
    let out = dir.join("model.gguf");
    let cut = 1_234_567;
    std::fs::write(dir.join("model.gguf.part"), &body[..cut]).expect("part");
    let o = fetch(&srv.url("/model.gguf"), Some(&sha), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert_eq!(
        srv.ranges.lock().expect("lock").as_slice(),
        &[Some(format!("{cut}-"))]
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
}

#[test]
fn a_bad_checksum_fails_naming_the_url_and_leaves_no_file() {
    let srv = FileServer::start(body());
    let dir = tmp("badsum");
    let out = dir.join("model.gguf");
    let url = srv.url("/model.gguf");
    let o = fetch(&url, Some(&"0".repeat(64)), &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("sha256 mismatch for {url}")) && last.contains(&"0".repeat(64)),
        "{err}"
    );
    assert!(!out.exists() && !dir.join("model.gguf.part").exists());
}

#[test]
fn an_http_error_is_not_retried_and_names_the_status() {
    let srv = FileServer::start(body());
    let dir = tmp("404");
    let url = srv.url("/missing.gguf");
    let o = fetch(&url, None, &dir.join("model.gguf"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("GET {url}: HTTP 404")), "{err}");
    assert_eq!(srv.ranges.lock().expect("lock").len(), 1, "a 404 is final");
}

#[test]
fn a_malformed_checksum_is_refused_before_any_request() {
    let srv = FileServer::start(body());
    let dir = tmp("malformed");
    let o = fetch(&srv.url("/model.gguf"), Some("abc"), &dir.join("m.gguf"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("64 hex digits"));
    assert!(srv.ranges.lock().expect("lock").is_empty());
}
