//! The operator's Prometheus metrics: one typed struct, registered once.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All metrics of the operator binary.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by stable error label.
    pub errors: IntCounterVec,
    /// Reconcile duration.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Duration of reading one serving pod's `/metrics` (answered or not).
    pub scrape_duration: Histogram,
    /// Failed `/metrics` reads by LlamaDeployment (`namespace`, `name`).
    pub scrape_failures: IntCounterVec,
    /// Replicas the autoscaler last decided on, by LlamaDeployment.
    pub desired_replicas: IntGaugeVec,
    /// `spec.replicas` the autoscaler last saw, by LlamaDeployment.
    pub current_replicas: IntGaugeVec,
    /// Changes the autoscaler wrote to `/scale`, by LlamaDeployment and direction (`up`, `down`).
    pub rescales: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "llama_operator_reconciles_total",
                "Reconciles of LlamaDeployments by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "llama_operator_reconcile_errors_total",
                "Failed reconciles by error label",
            ),
            &["error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "llama_operator_reconcile_duration_seconds",
                "Duration of one reconcile",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let leader = IntGauge::new(
            "llama_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(
                "llama_operator_autoscaler_scrape_duration_seconds",
                "Duration of reading one serving pod's /metrics, answered or not",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
            ]),
        )?;
        let per_ld = ["namespace", "name"];
        let scrape_failures = IntCounterVec::new(
            Opts::new(
                "llama_operator_autoscaler_scrape_failures_total",
                "Serving pods' /metrics reads that failed (timeout, refused, bad answer)",
            ),
            &per_ld,
        )?;
        let desired_replicas = IntGaugeVec::new(
            Opts::new(
                "llama_operator_autoscaler_desired_replicas",
                "Replicas the autoscaler last decided on",
            ),
            &per_ld,
        )?;
        let current_replicas = IntGaugeVec::new(
            Opts::new(
                "llama_operator_autoscaler_current_replicas",
                "spec.replicas the autoscaler last saw",
            ),
            &per_ld,
        )?;
        let rescales = IntCounterVec::new(
            Opts::new(
                "llama_operator_autoscaler_rescales_total",
                "Replica changes the autoscaler wrote to the scale subresource",
            ),
            &["namespace", "name", "direction"],
        )?;
        registry.register(Box::new(scrape_duration.clone()))?;
        registry.register(Box::new(scrape_failures.clone()))?;
        registry.register(Box::new(desired_replicas.clone()))?;
        registry.register(Box::new(current_replicas.clone()))?;
        registry.register(Box::new(rescales.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            scrape_duration,
            scrape_failures,
            desired_replicas,
            current_replicas,
            rescales,
        })
    }

    /// Starts timing a reconcile; the duration is recorded when the guard drops.
    pub fn time_reconcile(&self) -> DurationGuard {
        DurationGuard {
            histogram: self.duration.clone(),
            start: Instant::now(),
        }
    }

    /// Drops the per-LlamaDeployment series of an object that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        let _ = self.scrape_failures.remove_label_values(&[namespace, name]);
        let _ = self
            .desired_replicas
            .remove_label_values(&[namespace, name]);
        let _ = self
            .current_replicas
            .remove_label_values(&[namespace, name]);
        for direction in ["up", "down"] {
            let _ = self
                .rescales
                .remove_label_values(&[namespace, name, direction]);
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Records the elapsed time into the reconcile histogram on drop.
pub struct DurationGuard {
    histogram: HistogramVec,
    start: Instant,
}

impl Drop for DurationGuard {
    fn drop(&mut self) {
        self.histogram
            .with_label_values::<&str>(&[])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_metric_the_dashboard_queries_is_exported() {
        let m = Metrics::new().expect("metrics");
        // One sample in each labelled family, so the rendering lists it as /metrics would once it is used.
        m.reconciles.with_label_values(&["ok"]).inc();
        m.errors.with_label_values(&["kube"]).inc();
        drop(m.time_reconcile());
        m.scrape_duration.observe(0.01);
        m.scrape_failures.with_label_values(&["ns", "x"]).inc();
        m.desired_replicas.with_label_values(&["ns", "x"]).set(2);
        m.current_replicas.with_label_values(&["ns", "x"]).set(1);
        m.rescales.with_label_values(&["ns", "x", "up"]).inc();
        let text = m.render();
        let path = crate::plan::tests::package_dir()
            .join("..")
            .join(llama_contract::metrics::DASHBOARD);
        let dashboard = std::fs::read_to_string(&path).expect("the chart's dashboard");
        let wanted: Vec<String> = llama_contract::metrics::names_in(&dashboard)
            .into_iter()
            .filter(|n| n.starts_with("llama_operator_"))
            .collect();
        assert!(wanted.len() >= 4, "{wanted:?}");
        for n in wanted {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
                "the dashboard queries {n}, which the operator does not export:\n{text}"
            );
        }
    }

    #[test]
    fn reconcile_metrics_are_exposed_with_help_text() {
        let m = Metrics::new().expect("metrics");
        m.reconciles.with_label_values(&["ok"]).inc();
        m.errors.with_label_values(&["kube"]).inc();
        drop(m.time_reconcile());
        let text = m.render();
        assert!(
            text.contains("# HELP llama_operator_reconciles_total"),
            "{text}"
        );
        assert!(
            text.contains("llama_operator_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llama_operator_reconcile_errors_total{error=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llama_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
