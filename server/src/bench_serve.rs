//! `llama-server bench-serve`: a load generator for any OpenAI-compatible server (ours or llama.cpp's). At each
//! concurrency level it keeps N streams busy with streamed completions and reports aggregate output tokens/s,
//! time to first token, inter-token latency (p50/p99) and time per output token.
//!
//! Plain std threads and a minimal HTTP/1.1 client (chunked SSE), so the measurement has no async runtime of its
//! own competing with the server for the CPU.
//!
//! Token counting works for both servers' stream formats: every request sets `ignore_eos` and
//! `stream_options.include_usage`, the output token count is the server's `usage.completion_tokens` (ours sends
//! it in a usage-only chunk, llama.cpp in its final empty-text chunk, which also carries `finish_reason` and
//! `timings`, with or without `include_usage`), or the number of text-bearing chunks when a server reports no
//! usage. A chunk can hold several tokens: both servers hold back text that ends in a partial UTF-8 character
//! (llama.cpp streamed 24 emoji tokens in 8 chunks), ours also while it may still match a stop string. So chunks
//! are never taken for tokens when usage is present; ITL is measured per chunk, TPOT per token. Every response
//! must deliver exactly `--max-tokens` tokens and end with `[DONE]`; anything else fails the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `llama-server bench-serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchServeArgs {
    /// Server address, host:port (an `http://host:port` URL is accepted too).
    #[arg(
        long,
        visible_alias = "url",
        env = "LLAMA_BENCH_ADDR",
        default_value = "127.0.0.1:8000"
    )]
    pub addr: String,
    /// Model name to send (must match the server's).
    #[arg(long, env = "LLAMA_BENCH_MODEL")]
    pub model: Option<String>,
    /// Concurrency levels.
    #[arg(
        long,
        env = "LLAMA_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,4,16,64"
    )]
    pub concurrency: Vec<usize>,
    /// Requests per level (default: 2 x concurrency, at least 4).
    #[arg(long, env = "LLAMA_BENCH_REQUESTS")]
    pub requests: Option<usize>,
    /// Output tokens per request (ignore_eos is set so every request must produce exactly this many).
    #[arg(long, env = "LLAMA_BENCH_MAX_TOKENS", default_value_t = 64)]
    pub max_tokens: usize,
    /// Unmeasured requests sent one at a time before the first level (also checks the token count).
    #[arg(long, env = "LLAMA_BENCH_WARMUP", default_value_t = 1)]
    pub warmup: usize,
    /// Label for the table rows.
    #[arg(long, env = "LLAMA_BENCH_LABEL", default_value = "llama-server")]
    pub label: String,
    /// Mixed lengths: request `i` gets a prompt of 24–480 words and 16 to 2 × `--max-tokens` − 16 output
    /// tokens (mean `--max-tokens`), drawn from `i` alone, so every server sees the same workload. Without it
    /// every request is a ~17-token prompt and exactly `--max-tokens` output tokens.
    #[arg(long, env = "LLAMA_BENCH_MIXED")]
    pub mixed: bool,
    /// Constrain every request's output to this JSON schema (`response_format` json_schema), to measure
    /// the cost of constrained decoding. It must admit outputs of `--max-tokens` tokens (an unbounded array
    /// of strings, say): a finished grammar ends the request early, which fails the run.
    #[arg(long, env = "LLAMA_BENCH_JSON_SCHEMA")]
    pub json_schema: Option<String>,
}

/// What request `i` asks for: its prompt and its exact output length.
fn workload(i: usize, max_tokens: usize, mixed: bool) -> (String, usize) {
    if !mixed {
        return (
            format!("Request {i}. Write a long story about a traveller who finds a map."),
            max_tokens,
        );
    }
    // splitmix64 of the request number: deterministic, well spread
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    const WORDS: [&str; 16] = [
        "the", "river", "map", "old", "city", "light", "under", "stone", "long", "road", "night",
        "green", "bridge", "quiet", "north", "door",
    ];
    let words = 24 + (z % 457) as usize;
    let span = (2 * max_tokens).saturating_sub(31).max(1);
    let out = 16 + ((z >> 20) % span as u64) as usize;
    let mut prompt = format!("Request {i}. Continue this text:");
    for w in 0..words {
        prompt.push(' ');
        prompt.push_str(WORDS[((z >> (w % 48)) as usize + w * 7) % WORDS.len()]);
    }
    (prompt, out)
}

/// One request's timings.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Request start to the first text-bearing chunk.
    ttft: Duration,
    /// Gaps between consecutive text-bearing chunks.
    itl: Vec<Duration>,
    /// Output tokens (the server's usage when reported, else text-bearing chunks).
    tokens: usize,
    /// Text-bearing chunks (fewer than `tokens` when chunks held several tokens).
    chunks: usize,
    /// (last text chunk - first text chunk) / (tokens - 1): decode time per token, whatever the chunking.
    tpot: Option<Duration>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Reads one HTTP/1.1 chunked body, calling `on_line` for each complete line until it returns false.
fn read_chunked(
    r: &mut impl BufRead,
    mut on_line: impl FnMut(&str) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut pending = String::new();
    loop {
        let mut size_line = String::new();
        if r.read_line(&mut size_line)? == 0 {
            return Ok(());
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; size + 2];
        r.read_exact(&mut buf)?;
        pending.push_str(&String::from_utf8_lossy(&buf[..size]));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            if !on_line(line.trim_end())? {
                return Ok(());
            }
        }
    }
}

/// Folds one streamed completion's SSE lines into a [`Sample`].
#[derive(Debug)]
struct StreamState {
    start: Instant,
    sample: Sample,
    first: Option<Instant>,
    last: Option<Instant>,
    usage: Option<usize>,
    done: bool,
}

impl StreamState {
    fn new(start: Instant) -> Self {
        Self {
            start,
            sample: Sample::default(),
            first: None,
            last: None,
            usage: None,
            done: false,
        }
    }

    /// One SSE line received at `now`; false once `[DONE]` arrived.
    fn line(&mut self, line: &str, now: Instant) -> anyhow::Result<bool> {
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(true);
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(false);
        }
        let v: serde_json::Value =
            serde_json::from_str(data).with_context(|| format!("bad SSE data {data:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("error event in the stream: {e}");
        }
        if let Some(n) = v.pointer("/usage/completion_tokens") {
            let n = n
                .as_u64()
                .with_context(|| format!("bad usage.completion_tokens {n}"))?;
            self.usage = Some(n as usize);
        }
        let text = v
            .pointer("/choices/0/text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if !text.is_empty() {
            match self.last {
                None => {
                    self.sample.ttft = now - self.start;
                    self.first = Some(now);
                }
                Some(prev) => self.sample.itl.push(now - prev),
            }
            self.last = Some(now);
            self.sample.chunks += 1;
        }
        Ok(true)
    }

    /// The sample, once the stream is over; an error unless it delivered exactly `max_tokens` tokens.
    fn finish(mut self, max_tokens: usize) -> anyhow::Result<Sample> {
        if !self.done {
            bail!(
                "stream ended without [DONE] after {} text chunks",
                self.sample.chunks
            );
        }
        let tokens = self.usage.unwrap_or(self.sample.chunks);
        if self.sample.chunks > tokens {
            bail!(
                "{} text chunks but usage.completion_tokens = {tokens}",
                self.sample.chunks
            );
        }
        if tokens != max_tokens {
            bail!(
                "the server returned {tokens} output tokens ({}), {max_tokens} were requested with ignore_eos",
                if self.usage.is_some() {
                    "usage.completion_tokens"
                } else {
                    "text chunks, no usage reported"
                }
            );
        }
        self.sample.tokens = tokens;
        if let (Some(first), Some(last)) = (self.first, self.last)
            && tokens > 1
        {
            self.sample.tpot = Some((last - first) / (tokens - 1) as u32);
        }
        Ok(self.sample)
    }
}

/// `host:port` from `host:port` or `http://host:port/`.
fn host_port(addr: &str) -> &str {
    addr.trim_start_matches("http://").trim_end_matches('/')
}

fn one_request(addr: &str, body: &str, max_tokens: usize) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if h.to_ascii_lowercase().starts_with("transfer-encoding:")
            && h.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    if !status.contains(" 200 ") {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        bail!("HTTP {}: {rest}", status.trim());
    }
    let mut st = StreamState::new(start);
    let mut on_line = |line: &str| st.line(line, Instant::now());
    if chunked {
        read_chunked(&mut r, &mut on_line)?;
    } else {
        for line in r.lines() {
            if !on_line(&line?)? {
                break;
            }
        }
    }
    st.finish(max_tokens)
}

fn request_body(
    prompt: &str,
    model: Option<&str>,
    max_tokens: usize,
    schema: Option<&serde_json::Value>,
) -> String {
    let mut body = serde_json::json!({
        "prompt": prompt,
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(m) = model {
        body["model"] = serde_json::Value::String(m.to_string());
    }
    if let Some(schema) = schema {
        body["response_format"] = serde_json::json!({
            "type": "json_schema", "json_schema": {"name": "bench", "schema": schema},
        });
    }
    body.to_string()
}

/// The value of an unlabelled-by-us sample `name{...}` on the server's /metrics (our server only).
fn scrape(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let prefix = format!("{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs every level and prints a markdown table on stdout; fails on the first level with a failed request.
pub fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    let addr = host_port(&args.addr).to_string();
    let schema: Option<serde_json::Value> = args
        .json_schema
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--json-schema is not JSON")?;
    for i in 0..args.warmup {
        let (prompt, max_tokens) = workload(1_000_000 + i, args.max_tokens, args.mixed);
        one_request(
            &addr,
            &request_body(&prompt, args.model.as_deref(), max_tokens, schema.as_ref()),
            max_tokens,
        )
        .context("warm-up request")?;
    }
    println!(
        "| server | concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | \
         TPOT p50 ms | KV waste (mean) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in &args.concurrency {
        let n = args.requests.unwrap_or((2 * c).max(4));
        let next = Arc::new(Mutex::new(0usize));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        // Sample the KV waste gauge while the level runs (servers without it report n/a).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waste_samples = {
            let (stop, addr) = (stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut v = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if scrape(&addr, "llama_requests_running").unwrap_or(0.0) > 0.0
                        && let Some(w) = scrape(&addr, "llama_kv_cache_waste_ratio")
                    {
                        v.push(w);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                v
            })
        };
        let threads: Vec<_> = (0..c.max(1))
            .map(|_| {
                let (next, samples, errors) = (next.clone(), samples.clone(), errors.clone());
                let (addr, model, max_tokens, mixed, schema) = (
                    addr.clone(),
                    args.model.clone(),
                    args.max_tokens,
                    args.mixed,
                    schema.clone(),
                );
                std::thread::spawn(move || {
                    loop {
                        let i = {
                            let Ok(mut g) = next.lock() else { return };
                            if *g >= n {
                                return;
                            }
                            *g += 1;
                            *g
                        };
                        let (prompt, max_tokens) = workload(i, max_tokens, mixed);
                        let body =
                            request_body(&prompt, model.as_deref(), max_tokens, schema.as_ref());
                        match one_request(&addr, &body, max_tokens) {
                            Ok(s) => samples.lock().map(|mut v| v.push(s)).unwrap_or_default(),
                            Err(e) => errors
                                .lock()
                                .map(|mut v| v.push(format!("{e:#}")))
                                .unwrap_or_default(),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let wall = t0.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let waste = waste_samples.join().unwrap_or_default();
        let waste = if waste.is_empty() {
            "n/a".to_string()
        } else {
            format!(
                "{:.1} %",
                100.0 * waste.iter().sum::<f64>() / waste.len() as f64
            )
        };
        let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
        let errors = errors.lock().map(|v| v.clone()).unwrap_or_default();
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect();
        let mut itl: Vec<f64> = samples
            .iter()
            .flat_map(|s| s.itl.iter().map(|d| d.as_secs_f64() * 1e3))
            .collect();
        let mut tpot: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.tpot.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "| {} | {c} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {waste} |",
            args.label,
            samples.len(),
            tokens as f64 / wall,
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.99),
            percentile(&mut itl, 0.5),
            percentile(&mut itl, 0.99),
            percentile(&mut tpot, 0.5),
        );
        let packed = samples.iter().filter(|s| s.chunks < s.tokens).count();
        if packed > 0 {
            eprintln!(
                "bench-serve: {packed} of {} responses at concurrency {c} packed several tokens into a chunk \
                 (ITL is per chunk, TPOT per token)",
                samples.len()
            );
        }
        if let Some(e) = errors.first() {
            bail!(
                "{} of {n} requests failed at concurrency {c}; first: {e}",
                errors.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
