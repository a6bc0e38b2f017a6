//! Shared helpers for the end-to-end suite.
//!
//! Every e2e test is `#[ignore = "needs cluster"]` and runs with `make e2e` (which starts the local control
//! plane from `e2e/cluster/`, or uses the cluster named by `KUBECONFIG` when `E2E_EXISTING_CLUSTER=1`).
//! Each test works in its own namespace ([`TestNamespace`]) so tests can run in parallel and leave nothing
//! behind.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};

pub mod operator;
pub mod real_node;

/// The repository root. Read from `CARGO_MANIFEST_DIR` at run time (cargo sets it for `cargo test`), else
/// the path this crate was compiled at: a shared target directory can hold test binaries built from another
/// checkout, whose compile-time path no longer exists.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.join("Cargo.toml").exists())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("..")
}

/// True when the suite runs against a user's cluster (kind/k3d) instead of the local fake-node one:
/// checks that need kwok's fake GPU nodes are skipped then.
pub fn existing_cluster() -> bool {
    std::env::var("E2E_EXISTING_CLUSTER").is_ok_and(|v| v == "1")
}

/// A client for the cluster under test (from `KUBECONFIG`).
pub async fn client() -> Result<Client> {
    let config = Config::infer()
        .await
        .context("no usable KUBECONFIG for the e2e suite")?;
    Client::try_from(config).context("building a Kubernetes client")
}

/// Path of a binary from the locally built control plane (`kubectl`, `helm`, ...), as exported by
/// `e2e/run.sh` in `E2E_BIN_DIR`; falls back to `PATH`.
pub fn tool(name: &str) -> PathBuf {
    match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) if PathBuf::from(&dir).join(name).exists() => PathBuf::from(dir).join(name),
        _ => PathBuf::from(name),
    }
}

/// Runs a tool (e.g. `kubectl`) and returns its stdout; fails with its stderr on a non-zero exit.
pub fn run_tool(name: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(tool(name))
        .args(args)
        .output()
        .with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` with `what` and the last
/// observation (so a failing test says what it was waiting for and what it saw).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace owned by one test, deleted when the test calls [`TestNamespace::cleanup`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random suffix>`.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let suffix = format!("{:x}", std::process::id() ^ nanos());
        let name = format!("e2e-{prefix}-{}", &suffix[suffix.len().saturating_sub(6)..]);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "llama-operator.dev/e2e": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (the namespace controller removes its contents).
    pub async fn cleanup(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
