//! Shared harness of the serving tests: start `llama-server serve` on a free port, wait for /ready, run the
//! Python proof scripts in `tests/py/` against it, stop it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

// Model, python env and repo root are located exactly as the engine tests do.
#[path = "../engine_common/mod.rs"]
mod engine_common;
#[allow(unused_imports)] // not every serve test uses both
pub use engine_common::{package_dir, python, repo_root};

/// The default SmolLM2 Q4_1 model (`LLAMA_OP_MODEL`, else `scripts/fetch-model.sh`).
pub fn model() -> PathBuf {
    engine_common::smollm2()
}

/// The binary under test (`LLAMA_SERVER_BIN` overrides it, e.g. to pin a copy while others rebuild).
pub fn bin() -> PathBuf {
    std::env::var_os("LLAMA_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_llama-server")))
}
/// The served model name the tests use.
pub const NAME: &str = "smollm2";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running server; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    log: PathBuf,
}

impl Server {
    /// Starts `serve` with test defaults plus `extra` flags and waits for /ready.
    pub fn start(extra: &[&str]) -> Server {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("llama-serve-test-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let model = model();
        let port_s = port.to_string();
        let mut args = vec![
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "--served-model-name",
            NAME,
        ];
        // Test defaults, unless `extra` sets them.
        for (flag, value) in [("--max-seq-len", "512"), ("--kv-cache-memory", "100000000")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        let child = Command::new(bin())
            .args(&args)
            .arg("--model")
            .arg(&model)
            .env(
                "RAYON_NUM_THREADS",
                std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "1".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning llama-server serve");
        let mut s = Server {
            child: Some(child),
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let t = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited early ({st}):\n{}", s.log_text());
            }
            if http_get(port, "/ready")
                .map(|(c, _)| c == 200)
                .unwrap_or(false)
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "server not ready:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(
                t.elapsed() < timeout,
                "server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `tests/py/<script>` with the base URL and `args`; panics with its output on failure.
    pub fn py(&self, script: &str, args: &[&str]) -> String {
        let out = self.py_output(script, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{script} failed:\n{text}\n--- server log ---\n{}",
            self.log_tail()
        );
        eprintln!("{text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `tests/py/<script>` until it prints `READY-FOR-SIGTERM`, sends the server SIGTERM, then waits
    /// for the script; panics with its output when it fails. Returns when the SIGTERM was sent (for timing)
    /// and the script's remaining output.
    pub fn py_sigterm(&self, script: &str, args: &[&str]) -> (Instant, Vec<String>) {
        use std::io::BufRead;
        let dir = engine_common::package_dir().join("tests/py");
        let mut child = Command::new(python())
            .arg(dir.join(script))
            .arg(&self.base)
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, "READY-FOR-SIGTERM", "{script} {args:?}");
        let sent = Instant::now();
        self.sigterm();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let st = child.wait().expect("python exit");
        assert!(
            st.success(),
            "{script} {args:?} failed: {rest:?}\n{}",
            self.log_tail()
        );
        (sent, rest)
    }

    pub fn py_output(&self, script: &str, args: &[&str]) -> Output {
        let dir = engine_common::package_dir().join("tests/py");
        Command::new(python())
            .arg(dir.join(script))
            .arg(&self.base)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("running python")
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP GET: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(port, path, "X-Test: 1")
}

/// A minimal HTTP GET with one extra header line.
pub fn http_get_with(port: u16, path: &str, header: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{header}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// `llama-server generate` output (greedy) — the engine's own answer, the reference for the server.
pub fn generate(prompt: &str, max_tokens: usize, chat: bool) -> String {
    let mut cmd = Command::new(bin());
    cmd.args([
        "generate",
        "--prompt",
        prompt,
        "--max-tokens",
        &max_tokens.to_string(),
        "--temperature",
        "0",
    ])
    .arg("--model")
    .arg(model())
    .env("RAYON_NUM_THREADS", "1");
    if chat {
        cmd.arg("--chat");
    }
    let out = cmd.output().expect("running generate");
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // generate prints a trailing newline after the text
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}
