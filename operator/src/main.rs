//! The `llama-operator` binary: leader election, the controller and the autoscaler, `/metrics` and `/health`.
//! Runs in cluster (service account) or out of cluster with the current `KUBECONFIG`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context as _, Result};
use clap::Parser;
use futures::FutureExt as _;
use kube::Client;
use llama_operator::autoscale;
use llama_operator::controller::{self, Context};
use llama_operator::leader::Elector;
use llama_operator::metrics::Metrics;
use llama_operator::plan::PlanConfig;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "llama-operator",
    version,
    about = "Kubernetes operator for LlamaDeployments"
)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else the watched namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "llama-operator-leader")]
    lease_name: String,
    /// Identity in the Lease (default: POD_NAME, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Disable leader election (only for a single replica).
    #[arg(long)]
    no_leader_elect: bool,
    /// Address of the /metrics and /health endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Server image used when a LlamaDeployment sets none.
    #[arg(long, env = "LLAMA_SERVER_IMAGE")]
    server_image: Option<String>,
    /// Pull policy of the server image for LlamaDeployments that set none (`Always`, `IfNotPresent`,
    /// `Never`; default: Kubernetes' own).
    #[arg(long, env = "LLAMA_SERVER_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    server_image_pull_policy: Option<String>,
    /// Secret name every serving pod pulls its images with (repeatable, or comma-separated in the variable).
    #[arg(
        long = "server-image-pull-secret",
        env = "LLAMA_SERVER_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    server_image_pull_secrets: Vec<String>,
    /// Image of the init container fetching url models with `llama-server fetch` (default: the pod's own
    /// server image).
    #[arg(long, env = "LLAMA_FETCH_IMAGE")]
    fetch_image: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => drop(tokio::signal::ctrl_c().await),
        }
    }
    #[cfg(not(unix))]
    drop(tokio::signal::ctrl_c().await);
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let client = Client::try_default()
        .await
        .context("no usable Kubernetes config (in-cluster or KUBECONFIG)")?;
    let metrics = Metrics::new().context("registering metrics")?;

    let m = metrics.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(m.clone()))
            .route(
                "/health",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route(
                "/metrics",
                web::get().to(|m: web::Data<Metrics>| async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(m.render())
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(args.metrics_addr)
    .with_context(|| format!("binding {}", args.metrics_addr))?;
    info!(addrs = ?server.addrs(), "serving /metrics and /health");
    let server = server.run();
    let http = server.handle();
    tokio::spawn(server);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_ns = args
        .lease_namespace
        .clone()
        .or_else(|| args.watch_namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let elector = Elector::new(
        client.clone(),
        &lease_ns,
        &args.lease_name,
        &identity,
        Duration::from_secs(15),
    );

    let mut plan = PlanConfig::default();
    if let Some(i) = args.server_image {
        plan.default_image = i;
    }
    plan.fetch_image = args.fetch_image.filter(|i| !i.is_empty());
    plan.operator_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty());
    plan.image_pull_policy = args.server_image_pull_policy;
    plan.image_pull_secrets = args
        .server_image_pull_secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        plan,
        Some(identity.clone()),
    ));

    // Campaign, lead until a signal arrives or leadership is lost (e.g. the apiserver was unreachable for
    // longer than the lease), then stop the controller and, unless shutting down, campaign again.
    loop {
        if !args.no_leader_elect && !elector.acquire(Duration::from_secs(2), &stop_rx).await {
            break;
        }
        metrics.leader.set(1);
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stop = stop_rx.clone();
        // The controller and the autoscaler are leader-only tasks sharing one shutdown signal.
        let shutdown = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = lost_rx => {}
            }
        }
        .shared();
        let controller =
            controller::run(ctx.clone(), args.watch_namespace.clone(), shutdown.clone());
        let autoscaler = autoscale::run(ctx.clone(), args.watch_namespace.clone(), shutdown);
        info!(namespace = ?args.watch_namespace, "controller and autoscaler starting");
        if args.no_leader_elect {
            let _never_lost = lost_tx;
            tokio::join!(controller, autoscaler);
        } else {
            let keep = async {
                let kept = elector.keep(Duration::from_secs(5), &stop_rx).await;
                let _ = lost_tx.send(());
                kept
            };
            let ((), (), _) = tokio::join!(controller, autoscaler, keep);
        }
        metrics.leader.set(0);
        info!("controller and autoscaler stopped");
        if *stop_rx.borrow() {
            if !args.no_leader_elect {
                elector.release().await;
            }
            break;
        }
        warn!("lost leadership: campaigning again");
    }
    http.stop(true).await;
    Ok(())
}
