//! `llama-server fetch` (the `url` model source's init container) against a real local HTTP server: a full
//! download with its checksum, a resumed one (HTTP Range), a bad checksum, an HTTP error, and a file already
//! in place. The reference digest comes from `sha256sum`, not from our own code.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// One request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// A tiny HTTP/1.1 server for one file with Range support, recording every request:
/// - `/model.gguf`: the file;
/// - `/gated/model.gguf`: the file, or 401 without `Authorization: Bearer <TOKEN>`;
/// - `/hop`: a relative 302 to `/gated/model.gguf` (same origin);
/// - `/org/repo/resolve/<rev>/model.gguf` (a hub): 401 without the token, else a 302 to `redirect_to` (another
///   origin, as Hugging Face redirects to its CDN);
/// - 404 elsewhere.
struct FileServer {
    port: u16,
    requests: Arc<Mutex<Vec<Seen>>>,
}

const TOKEN: &str = "hf_s3cr3t-t0ken";

fn serve_one(mut s: TcpStream, body: &[u8], requests: &Mutex<Vec<Seen>>, redirect_to: &str) {
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range = Some(v.trim().to_owned());
        }
        if lower.starts_with("authorization:") {
            authorization = Some(line["authorization:".len()..].trim().to_owned());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    requests.lock().expect("lock").push(Seen {
        path: path.clone(),
        range: range.clone(),
        authorization: authorization.clone(),
    });
    let authorized = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let plain = |s: &mut TcpStream, status: &str, extra: &str| {
        let _ = s.write_all(
            format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
    };
    match path.split('?').next().unwrap_or_default() {
        "/model.gguf" => {}
        "/gated/model.gguf" if authorized => {}
        "/hop" => return plain(&mut s, "302 Found", "Location: /gated/model.gguf\r\n"),
        p if p.starts_with("/org/repo/resolve/") && p.ends_with("/model.gguf") && authorized => {
            return plain(&mut s, "302 Found", &format!("Location: {redirect_to}\r\n"));
        }
        "/gated/model.gguf" => return plain(&mut s, "401 Unauthorized", ""),
        p if p.starts_with("/org/repo/resolve/") => return plain(&mut s, "401 Unauthorized", ""),
        _ => return plain(&mut s, "404 Not Found", ""),
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
        Self::redirecting(body, String::new())
    }

    /// A server whose hub path redirects to `redirect_to`.
    fn redirecting(body: Vec<u8>, redirect_to: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&requests);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                serve_one(s, &body, &r, &redirect_to);
            }
        });
        Self { port, requests }
    }

    fn seen(&self) -> Vec<Seen> {
        self.requests.lock().expect("lock").clone()
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
    fetch_with(url, sha, out, None, None)
}

/// `llama-server fetch`, with an optional `--headers-dir` and `HF_ENDPOINT`.
fn fetch_with(
    url: &str,
    sha: Option<&str>,
    out: &Path,
    headers_dir: Option<&Path>,
    hf_endpoint: Option<&str>,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llama-server"));
    cmd.args(["fetch", "--url", url, "--out"])
        .arg(out)
        .args(["--retries", "1"]);
    if let Some(s) = sha {
        cmd.args(["--sha256", s]);
    }
    if let Some(d) = headers_dir {
        cmd.arg("--headers-dir").arg(d);
    }
    cmd.env_remove("MODEL_URL")
        .env_remove("MODEL_SHA256")
        .env_remove("MODEL_HEADERS_DIR")
        .env_remove("HF_ENDPOINT");
    if let Some(e) = hf_endpoint {
        cmd.env("HF_ENDPOINT", e);
    }
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
    let before = srv.seen().len();
    let o = fetch(&srv.url("/model.gguf"), Some(&sha), &out);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already present"));
    assert_eq!(srv.seen().len(), before);
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
    let ranges: Vec<Option<String>> = srv.seen().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, [Some(format!("{cut}-"))]);
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
    assert_eq!(srv.seen().len(), 1, "a 404 is final");
}

#[test]
fn a_malformed_checksum_is_refused_before_any_request() {
    let srv = FileServer::start(body());
    let dir = tmp("malformed");
    let o = fetch(&srv.url("/model.gguf"), Some("abc"), &dir.join("m.gguf"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("64 hex digits"));
    assert!(srv.seen().is_empty());
}

/// A directory laid out like a mounted Secret: `..data` → a timestamped directory holding the keys, and each key
/// a symlink through `..data`.
fn secret_dir(dir: &Path, keys: &[(&str, &str)]) -> PathBuf {
    let d = dir.join("headers");
    let data = d.join("..2026_12_06_00_00_00.000000001");
    std::fs::create_dir_all(&data).expect("secret dir");
    std::os::unix::fs::symlink("..2026_12_06_00_00_00.000000001", d.join("..data"))
        .expect("..data");
    for (k, v) in keys {
        std::fs::write(data.join(k), v).expect("key");
        std::os::unix::fs::symlink(format!("..data/{k}"), d.join(k)).expect("key link");
    }
    d
}

#[test]
fn a_gated_url_gets_the_secret_header_and_its_value_never_reaches_the_log() {
    let body = body();
    let srv = FileServer::start(body.clone());
    let dir = tmp("gated");
    let out = dir.join("model.gguf");

    // Without credentials: a clear, final 401.
    let o = fetch(&srv.url("/gated/model.gguf"), None, &out);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"));

    // With the Secret (a trailing newline, as `kubectl create secret --from-file` often leaves): downloaded,
    // through a same-origin relative redirect that keeps the header.
    let headers = secret_dir(&dir, &[("Authorization", &format!("Bearer {TOKEN}\n"))]);
    let o = fetch_with(&srv.url("/hop"), None, &out, Some(&headers), None);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert!(log.contains("sending header(s) Authorization"), "{log}");
    assert!(!log.contains(TOKEN), "the token was logged: {log}");
    let seen = srv.seen();
    let last_two: Vec<(&str, Option<&str>)> = seen[seen.len() - 2..]
        .iter()
        .map(|r| (r.path.as_str(), r.authorization.as_deref()))
        .collect();
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        last_two,
        [
            ("/hop", Some(bearer.as_str())),
            ("/gated/model.gguf", Some(bearer.as_str()))
        ]
    );
}

#[test]
fn hf_urls_resolve_against_the_hub_and_the_token_stays_off_the_cdn() {
    let body = body();
    let cdn = FileServer::start(body.clone());
    let hub = FileServer::redirecting(Vec::new(), cdn.url("/model.gguf?X-Signature=abc123"));
    let dir = tmp("hf");
    let sha = reference_digest(&body, &dir);
    let out = dir.join("model.gguf");
    let headers = secret_dir(&dir, &[("Authorization", &format!("Bearer {TOKEN}"))]);
    let o = fetch_with(
        "hf://org/repo@v2/model.gguf",
        Some(&sha),
        &out,
        Some(&headers),
        Some(&hub.url("")),
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert_eq!(std::fs::read(&out).expect("output"), body);
    let hub_seen = hub.seen();
    assert_eq!(hub_seen.len(), 1);
    assert_eq!(hub_seen[0].path, "/org/repo/resolve/v2/model.gguf");
    assert_eq!(
        hub_seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen.len(), 1);
    assert_eq!(
        cdn_seen[0].authorization, None,
        "the token followed the redirect to another origin"
    );
    assert!(!log.contains("abc123"), "a signed query was logged: {log}");

    // A malformed shorthand is refused before any request, naming the expected form.
    let o = fetch_with(
        "hf://org/repo",
        None,
        &dir.join("x.gguf"),
        None,
        Some(&hub.url("")),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("hf://<org>/<repo>"));
    assert_eq!(hub.seen().len(), 1);
}

#[test]
fn a_header_file_with_a_line_break_is_refused_without_echoing_it() {
    let srv = FileServer::start(body());
    let dir = tmp("badheader");
    let headers = secret_dir(&dir, &[("Authorization", "Bearer abc\r\nX-Injected: 1")]);
    let o = fetch_with(
        &srv.url("/gated/model.gguf"),
        None,
        &dir.join("m.gguf"),
        Some(&headers),
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("header Authorization holds a line break"),
        "{err}"
    );
    assert!(!err.contains("X-Injected"), "{err}");
    assert!(srv.seen().is_empty());
}

#[test]
fn two_fetches_into_one_shared_cache_download_the_file_once() {
    let body = body();
    let srv = FileServer::start(body.clone());
    let dir = tmp("shared");
    let sha = reference_digest(&body, &dir);
    let out = dir.join("cache/sha256-x/model.gguf");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_llama-server"))
            .args([
                "fetch",
                "--url",
                &srv.url("/model.gguf"),
                "--sha256",
                &sha,
                "--out",
            ])
            .arg(&out)
            .env_remove("MODEL_URL")
            .env_remove("MODEL_SHA256")
            .env_remove("MODEL_HEADERS_DIR")
            .env_remove("HF_ENDPOINT")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fetch")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        a.wait_with_output().expect("fetch a"),
        b.wait_with_output().expect("fetch b"),
    );
    let logs = format!(
        "{}\n---\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(a.status.success() && b.status.success(), "{logs}");
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert_eq!(srv.seen().len(), 1, "downloaded more than once:\n{logs}");
    assert!(logs.contains("already present"), "{logs}");
}
