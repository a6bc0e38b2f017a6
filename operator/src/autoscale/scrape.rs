//! Reading a serving pod's `/metrics`: a short-timeout plain-HTTP GET (thin I/O) and picking the numbers the
//! autoscaler needs out of the Prometheus text format (pure). The metric names, port and path come from the
//! shared contract, so a rename in the server fails the build here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llama_contract::metrics::{DRAINING, KV_CACHE_USAGE, REQUESTS_RUNNING, REQUESTS_WAITING};

/// Largest `/metrics` body read (ours is a few KiB).
const MAX_BODY: usize = 4 << 20;

/// What one pod reported.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodMetrics {
    /// Requests waiting in the pod's queue (`llama_requests_waiting`).
    pub waiting: Option<f64>,
    /// Requests being generated (`llama_requests_running`).
    pub running: Option<f64>,
    /// Fraction of the KV-cache blocks in use (`llama_kv_cache_usage_ratio`).
    pub kv_usage: Option<f64>,
    /// The server is draining (`llama_draining` = 1): about to leave, its numbers do not count.
    pub draining: bool,
}

/// Why a pod's metrics could not be read; the text goes into conditions and logs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("body: {0}")]
    Body(String),
    #[error("{0} is not in the answer")]
    Missing(&'static str),
}

/// Picks the autoscaler's series out of a text exposition. A series with labels is summed over its label
/// sets; a value that is not a finite number counts as absent.
pub fn parse(text: &str) -> PodMetrics {
    let mut sums: [Option<f64>; 4] = [None; 4];
    let names = [REQUESTS_WAITING, REQUESTS_RUNNING, KV_CACHE_USAGE, DRAINING];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(slot) = names.iter().position(|n| *n == name) else {
            continue;
        };
        // The value follows the labels (which may contain spaces inside quotes) or the name.
        let rest = match line[name_end..].strip_prefix('{') {
            Some(labels) => match labels.rfind('}') {
                Some(close) => &labels[close + 1..],
                None => continue,
            },
            None => &line[name_end..],
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        sums[slot] = Some(sums[slot].unwrap_or(0.0) + value);
    }
    PodMetrics {
        waiting: sums[0],
        running: sums[1],
        kv_usage: sums[2],
        draining: sums[3].is_some_and(|v| v > 0.0),
    }
}

/// A pooled HTTP client for pods' `/metrics`.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraper")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Scraper {
    /// A client whose every scrape (connect, answer and body) must finish within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }

    /// `GET http://<ip>:<port>/metrics` and parse it.
    pub async fn scrape(&self, ip: &str, port: u16) -> Result<PodMetrics, ScrapeError> {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        let url = format!("http://{host}:{port}{}", llama_contract::paths::METRICS);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| ScrapeError::Connect(format!("bad address {url}: {e}")))?;
        let fetch = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| ScrapeError::Connect(error_chain(&e)))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(ScrapeError::Status(status));
            }
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ScrapeError::Body(e.to_string()))?
                .to_bytes();
            Ok(body)
        };
        let body = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout(self.timeout))??;
        let m = parse(&String::from_utf8_lossy(&body));
        if m.waiting.is_none() {
            return Err(ScrapeError::Missing(REQUESTS_WAITING));
        }
        Ok(m)
    }
}

/// An error with its sources, one line ("client error (Connect): tcp connect error: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_gauges_are_read_and_everything_else_is_ignored() {
        let text = format!(
            "# HELP {REQUESTS_WAITING} Requests waiting\n# TYPE {REQUESTS_WAITING} gauge\n\
             {REQUESTS_WAITING} 7\n{REQUESTS_RUNNING} 2\n{KV_CACHE_USAGE} 0.375\n{DRAINING} 0\n\
             vllm:num_requests_waiting 7\nllama_requests_waiting_total 99\n"
        );
        assert_eq!(
            parse(&text),
            PodMetrics {
                waiting: Some(7.0),
                running: Some(2.0),
                kv_usage: Some(0.375),
                draining: false,
            }
        );
    }

    #[test]
    fn labelled_series_are_summed_and_odd_values_dropped() {
        let text = format!(
            "{REQUESTS_WAITING}{{engine=\"0\",note=\"a }} b\"}} 3 1700000000000\n\
             {REQUESTS_WAITING}{{engine=\"1\"}} 4\n{KV_CACHE_USAGE} NaN\n{REQUESTS_RUNNING} x\n{DRAINING} 1\n"
        );
        let m = parse(&text);
        assert_eq!(m.waiting, Some(7.0));
        assert_eq!(m.kv_usage, None);
        assert_eq!(m.running, None);
        assert!(m.draining);
    }

    /// The other half of the contract: what the server itself renders (with its labels and `vllm:` aliases).
    #[test]
    fn the_servers_own_exposition_parses_to_the_values_it_holds() {
        let m = llama_server::metrics::Metrics::new("smollm2").expect("server metrics");
        m.requests_waiting.set(9);
        m.requests_running.set(4);
        m.kv_cache_usage.set(0.625);
        assert_eq!(
            parse(&m.render()),
            PodMetrics {
                waiting: Some(9.0),
                running: Some(4.0),
                kv_usage: Some(0.625),
                draining: false,
            }
        );
        m.draining.set(1);
        assert!(parse(&m.render()).draining);
    }

    #[test]
    fn an_empty_or_foreign_exposition_has_no_numbers() {
        assert_eq!(parse(""), PodMetrics::default());
        assert_eq!(
            parse("go_goroutines 12\nprocess_cpu_seconds_total 3.5\n"),
            PodMetrics::default()
        );
    }
}
