//! `llama-server fetch`: download a model file for the `url` model source (the serving pod's init container
//! runs it, so no third-party image is needed). Resumes a partial download (`<out>.part`, HTTP Range), retries
//! transient failures with back-off, verifies the SHA-256 while streaming, logs progress, and publishes the
//! file atomically (rename), so the server never sees half a model. `hf://org/repo[@rev]/file.gguf` resolves to
//! a Hugging Face `resolve` URL (against `HF_ENDPOINT` when set). Request headers from `--headers-dir` (the
//! mounted `headersSecretRef` Secret, e.g. `Authorization: Bearer …`) are sent to the URL's own origin only,
//! never across a redirect to another host or scheme, and their values are never logged; neither is a URL's query.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llama_contract::fetch_flags as flags;

mod http;
use http::{MAX_REDIRECTS, Target, get, origin, read_headers, shown};
use ring::digest::{Context as Sha256, SHA256};

/// `llama-server fetch` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// http(s) URL of the GGUF file, or `hf://<org>/<repo>[@<revision>]/<file>` (a Hugging Face resolve URL;
    /// `HF_ENDPOINT` names a mirror).
    #[arg(long = flags::URL, env = "MODEL_URL")]
    pub url: String,
    /// Directory of request headers: each file's name is a header name, its content (trimmed) the value.
    /// Files whose names start with '.' are skipped (a mounted Secret's bookkeeping).
    #[arg(long = flags::HEADERS_DIR, env = "MODEL_HEADERS_DIR")]
    pub headers_dir: Option<PathBuf>,
    /// Expected SHA-256 of the file (64 hex digits); the download fails when it differs.
    #[arg(long = flags::SHA256, env = "MODEL_SHA256")]
    pub sha256: Option<String>,
    /// Where to write the file (a `.part` file beside it holds an unfinished download).
    #[arg(long = flags::OUT)]
    pub out: PathBuf,
    /// Attempts after the first for connection errors, timeouts and HTTP 408/429/5xx.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Give up on an attempt when no byte arrives for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub stall_timeout: u64,
}

/// Why a fetch failed. `permanent` failures are not retried.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Usage(String),
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual} ({bytes} bytes)")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("GET {url}: the body ended after {got} of {want} bytes")]
    Truncated { url: String, got: u64, want: u64 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: more than {MAX_REDIRECTS} redirects")]
    Redirects { url: String },
    #[error("GET {url}: HTTP {status} redirect without a usable Location header")]
    BadRedirect { url: String, status: u16 },
    #[error("GET {url}: reading the body: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    fn retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            FetchError::Transport { .. }
            | FetchError::Truncated { .. }
            | FetchError::Read { .. } => true,
            FetchError::Usage(_)
            | FetchError::Checksum { .. }
            | FetchError::Io { .. }
            | FetchError::Redirects { .. }
            | FetchError::BadRedirect { .. } => false,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    move |source| FetchError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checked expected digest: 64 hex digits, lower-cased.
fn parse_sha256(s: &str) -> Result<String, FetchError> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FetchError::Usage(format!(
            "--sha256 must be 64 hex digits, got {:?}",
            s
        )));
    }
    Ok(t)
}

fn sha256_of_file(path: &Path) -> Result<(Sha256, u64), FetchError> {
    let mut f = File::open(path).map_err(io("reading", path))?;
    let mut ctx = Sha256::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io("reading", path))?;
        if k == 0 {
            return Ok((ctx, n));
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

/// Runs `fetch`. Progress and the outcome go to stderr (the init container's log).
pub fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let expected = args.sha256.as_deref().map(parse_sha256).transpose()?;
    let hf_endpoint = std::env::var(llama_contract::model_url::HF_ENDPOINT_ENV).ok();
    let url = llama_contract::model_url::resolve(&args.url, hf_endpoint.as_deref())
        .map_err(|e| FetchError::Usage(format!("--{}: {e}", flags::URL)))?;
    let headers = match &args.headers_dir {
        Some(dir) => read_headers(dir)?,
        None => Vec::new(),
    };
    if !headers.is_empty() {
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!(
            "fetch: sending header(s) {} to {} only (values not logged)",
            names.join(", "),
            origin(&url)
        );
    }
    let target = Target {
        url,
        headers,
        out: args.out.clone(),
        stall_timeout: args.stall_timeout,
    };
    let out = &args.out;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    // In a shared cache (a hostPath or RWX volume) replicas fetch the same file at once: they take turns, and
    // whoever comes second finds the file in place (the lock is released when the process exits).
    let lock_path = PathBuf::from(format!("{}.lock", out.display()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "fetch: another fetch of {} is running; waiting for it",
            out.display()
        );
        lock.lock().map_err(io("locking", &lock_path))?;
    }
    if out.is_file() {
        match &expected {
            Some(want) => {
                let (ctx, n) = sha256_of_file(out)?;
                let got = hex(ctx.finish().as_ref());
                if &got == want {
                    eprintln!(
                        "fetch: {} already present ({n} bytes, sha256 ok)",
                        out.display()
                    );
                    return Ok(());
                }
                eprintln!(
                    "fetch: {} is present but its sha256 is {got}, not {want}: downloading again",
                    out.display()
                );
                std::fs::remove_file(out).map_err(io("removing", out))?;
            }
            None => {
                eprintln!(
                    "fetch: {} already present (no --sha256 to check)",
                    out.display()
                );
                return Ok(());
            }
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("llama-server-fetch/", env!("CARGO_PKG_VERSION")))
        // Redirects are followed by `get`, which decides per hop whether the secret headers may go along.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into();
    let mut attempt = 0u32;
    loop {
        match download(&agent, &target, expected.as_deref()) {
            Ok(n) => {
                eprintln!(
                    "fetch: wrote {} ({n} bytes{})",
                    out.display(),
                    if expected.is_some() {
                        ", sha256 ok"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            Err(e) if e.retryable() && attempt < args.retries => {
                attempt += 1;
                let wait = Duration::from_secs((1u64 << attempt.min(5)).min(30));
                eprintln!(
                    "fetch: {e}; retry {attempt}/{} in {}s",
                    args.retries,
                    wait.as_secs()
                );
                std::thread::sleep(wait);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One attempt: resume `<out>.part` when the server honours Range, stream into it while hashing, verify,
/// rename. Returns the file size.
fn download(
    agent: &ureq::Agent,
    target: &Target,
    expected: Option<&str>,
) -> Result<u64, FetchError> {
    let part = part_path(&target.out);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let (resp, final_url) = get(agent, target, have)?;
    let url = &shown(&final_url);
    let status = resp.status().as_u16();
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (mut file, mut ctx, start) = match status {
        206 if have > 0 => {
            eprintln!("fetch: resuming {url} at byte {have}");
            let (ctx, n) = sha256_of_file(&part)?;
            let f = OpenOptions::new()
                .append(true)
                .open(&part)
                .map_err(io("opening", &part))?;
            (f, ctx, n)
        }
        200 => {
            let f = File::create(&part).map_err(io("creating", &part))?;
            (f, Sha256::new(&SHA256), 0)
        }
        416 if have > 0 => {
            // The part already holds the whole file: verify and publish it.
            let (ctx, n) = sha256_of_file(&part)?;
            return finish(target, expected, &part, ctx, n);
        }
        s => {
            return Err(FetchError::Status {
                url: url.clone(),
                status: s,
            });
        }
    };
    let total = length.map(|l| l + start);
    eprintln!(
        "fetch: GET {url} -> HTTP {status}, {}",
        total.map_or("size unknown".to_owned(), |t| format!("{t} bytes"))
    );
    // A watchdog ends the process when no byte arrives for `stall_timeout` (a blocking read cannot be
    // cancelled); the kubelet restarts the init container, which resumes from the part file.
    let progress = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicU64::new(0));
    {
        let (progress, done, stall) = (
            Arc::clone(&progress),
            Arc::clone(&done),
            target.stall_timeout.max(1),
        );
        let url = url.clone();
        std::thread::spawn(move || {
            let mut last = progress.load(Ordering::Relaxed);
            let mut since = Instant::now();
            while done.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(250));
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > Duration::from_secs(stall) {
                    eprintln!(
                        "fetch: GET {url}: no data for {stall}s at byte {now}; exiting (a restart resumes)"
                    );
                    std::process::exit(3);
                }
            }
        });
    }
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = start;
    let t0 = Instant::now();
    let mut next_log = Instant::now() + Duration::from_secs(5);
    let result = loop {
        let k = match reader.read(&mut buf) {
            Ok(k) => k,
            Err(source) => {
                break Err(FetchError::Read {
                    url: url.clone(),
                    source,
                });
            }
        };
        if k == 0 {
            break Ok(());
        }
        if let Err(e) = file.write_all(&buf[..k]) {
            break Err(FetchError::Io {
                what: "writing",
                path: part.clone(),
                source: e,
            });
        }
        ctx.update(&buf[..k]);
        n += k as u64;
        progress.store(n, Ordering::Relaxed);
        if Instant::now() >= next_log {
            next_log = Instant::now() + Duration::from_secs(5);
            let mib_s = (n - start) as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64();
            match total {
                Some(t) if t > 0 => eprintln!(
                    "fetch: {n}/{t} bytes ({:.0}%), {mib_s:.1} MiB/s",
                    n as f64 * 100.0 / t as f64
                ),
                _ => eprintln!("fetch: {n} bytes, {mib_s:.1} MiB/s"),
            }
        }
    };
    done.store(1, Ordering::Relaxed);
    result?;
    file.sync_all().map_err(io("syncing", &part))?;
    drop(file);
    if let Some(t) = total
        && n < t
    {
        return Err(FetchError::Truncated {
            url: url.clone(),
            got: n,
            want: t,
        });
    }
    finish(target, expected, &part, ctx, n)
}

fn finish(
    target: &Target,
    expected: Option<&str>,
    part: &Path,
    ctx: Sha256,
    n: u64,
) -> Result<u64, FetchError> {
    let actual = hex(ctx.finish().as_ref());
    if let Some(want) = expected
        && actual != want
    {
        // A corrupt part must not be resumed by the next attempt.
        let _ = std::fs::remove_file(part);
        return Err(FetchError::Checksum {
            url: shown(&target.url),
            expected: want.to_owned(),
            actual,
            bytes: n,
        });
    }
    std::fs::rename(part, &target.out).map_err(io("renaming into place", &target.out))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_must_be_sixty_four_hex_digits() {
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert_eq!(
            parse_sha256(&"AB".repeat(32)).expect("upper case"),
            "ab".repeat(32)
        );
        let err = parse_sha256("abc").expect_err("short").to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn part_file_sits_beside_the_output() {
        assert_eq!(
            part_path(Path::new("/models/model.gguf")),
            PathBuf::from("/models/model.gguf.part")
        );
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |s| FetchError::Status {
            url: "u".into(),
            status: s,
        };
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(404).retryable());
        assert!(!status(403).retryable());
        let sum = FetchError::Checksum {
            url: "u".into(),
            expected: "a".into(),
            actual: "b".into(),
            bytes: 1,
        };
        assert!(!sum.retryable());
    }
}
