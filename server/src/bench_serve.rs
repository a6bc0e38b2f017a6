//! `llama-server bench-serve`: a load generator for any OpenAI-compatible server (ours or llama.cpp's). At each
//! concurrency level it keeps N streams busy with streamed completions and reports aggregate output tokens/s,
//! time to first token and inter-token latency (p50/p99).
//!
//! Plain std threads and a minimal HTTP/1.1 client (chunked SSE), so the measurement has no async runtime of its
//! own competing with the server for the CPU.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `llama-server bench-serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchServeArgs {
    /// Server address, host:port.
    #[arg(long, env = "LLAMA_BENCH_ADDR", default_value = "127.0.0.1:8000")]
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
    /// Output tokens per request (ignore_eos is set so every request produces exactly this many).
    #[arg(long, env = "LLAMA_BENCH_MAX_TOKENS", default_value_t = 64)]
    pub max_tokens: usize,
    /// Label for the table rows.
    #[arg(long, env = "LLAMA_BENCH_LABEL", default_value = "llama-server")]
    pub label: String,
}

/// One request's timings.
#[derive(Debug, Clone, Default)]
struct Sample {
    ttft: Duration,
    itl: Vec<Duration>,
    tokens: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Reads one HTTP/1.1 chunked body, calling `on_line` for each complete line.
fn read_chunked(r: &mut impl BufRead, mut on_line: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
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
            if !on_line(line.trim_end()) {
                return Ok(());
            }
        }
    }
}

fn one_request(addr: &str, body: &str) -> anyhow::Result<Sample> {
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
    let mut sample = Sample::default();
    let mut last: Option<Instant> = None;
    let mut usage_tokens = None;
    let mut on_line = |line: &str| -> bool {
        let Some(data) = line.strip_prefix("data: ") else {
            return true;
        };
        if data == "[DONE]" {
            return false;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return true;
        };
        if let Some(n) = v
            .pointer("/usage/completion_tokens")
            .and_then(serde_json::Value::as_u64)
        {
            usage_tokens = Some(n as usize);
        }
        let text = v
            .pointer("/choices/0/text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if !text.is_empty() {
            let now = Instant::now();
            match last {
                None => sample.ttft = now - start,
                Some(prev) => sample.itl.push(now - prev),
            }
            last = Some(now);
            sample.tokens += 1;
        }
        true
    };
    if chunked {
        read_chunked(&mut r, &mut on_line)?;
    } else {
        for line in r.lines() {
            if !on_line(&line?) {
                break;
            }
        }
    }
    if let Some(n) = usage_tokens {
        sample.tokens = n;
    }
    Ok(sample)
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

/// Runs every level and prints a markdown table on stdout.
pub fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    println!(
        "| server | concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | \
         KV waste (mean) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &c in &args.concurrency {
        let n = args.requests.unwrap_or((2 * c).max(4));
        let next = Arc::new(Mutex::new(0usize));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        // Sample the KV waste gauge while the level runs (servers without it report n/a).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waste_samples = {
            let (stop, addr) = (stop.clone(), args.addr.clone());
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
                let (addr, model, max_tokens) = (args.addr.clone(), args.model.clone(), args.max_tokens);
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
                        let mut body = serde_json::json!({
                            "prompt": format!("Request {i}. Write a long story about a traveller who finds a map."),
                            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true,
                            "stream_options": {"include_usage": true},
                        });
                        if let Some(m) = &model {
                            body["model"] = serde_json::Value::String(m.clone());
                        }
                        match one_request(&addr, &body.to_string()) {
                            Ok(s) => samples.lock().map(|mut v| v.push(s)).unwrap_or_default(),
                            Err(e) => errors.lock().map(|mut v| v.push(e.to_string())).unwrap_or_default(),
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
        if let Some(e) = errors.lock().ok().and_then(|v| v.first().cloned()) {
            eprintln!("bench-serve: errors at concurrency {c}: {e}");
        }
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect();
        let mut itl: Vec<f64> = samples
            .iter()
            .flat_map(|s| s.itl.iter().map(|d| d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "| {} | {c} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {waste} |",
            args.label,
            samples.len(),
            tokens as f64 / wall,
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.99),
            percentile(&mut itl, 0.5),
            percentile(&mut itl, 0.99),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_sse_is_split_into_lines_across_chunk_boundaries() {
        let body = "7\r\ndata: a\r\n6\r\n\ndata:\r\n4\r\n b\n\n\r\n0\r\n\r\n";
        let mut lines = Vec::new();
        read_chunked(&mut body.as_bytes(), |l| {
            lines.push(l.to_string());
            true
        })
        .unwrap();
        assert_eq!(lines, vec!["data: a", "data: b", ""]);
    }

    #[test]
    fn percentiles_pick_from_the_sorted_samples() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
    }
}
