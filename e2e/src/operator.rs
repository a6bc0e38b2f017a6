//! The operator under test: started out of cluster (the binary built by `cargo build -p llama-operator`), one
//! per test, scoped to the test's namespace with `--watch-namespace` (so tests run in parallel without sharing
//! a leader Lease), plus helpers for `LlamaDeployment` objects and their conditions.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};

use crate::{TestNamespace, repo_root, run_tool, wait_for};

/// Label selector of the children the operator manages.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=llama-operator";

/// The operator binary: `$LLAMA_OPERATOR_BIN`, else `$CARGO_TARGET_DIR/debug/llama-operator`, else
/// `<workspace>/target/debug/llama-operator` (e2e/run.sh builds it before the suite).
pub fn operator_bin() -> Result<PathBuf> {
    let candidates = [
        std::env::var_os("LLAMA_OPERATOR_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug/llama-operator")),
        Some(repo_root().join("target/debug/llama-operator")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .context("llama-operator binary not found: run `cargo build -p llama-operator` first")
}

/// A running operator process, killed when dropped.
pub struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
    namespace: String,
    finished: bool,
}

impl Operator {
    /// Starts `llama-operator --watch-namespace <namespace> --identity <identity>` with `/metrics` on a free
    /// local port and its log in the temp dir.
    pub fn start(namespace: &str, identity: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::env::temp_dir().join(format!("llama-operator-{namespace}-{identity}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(operator_bin()?)
            .args([
                "--watch-namespace",
                namespace,
                "--identity",
                identity,
                "--log-format",
                "text",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("spawning llama-operator")?;
        Ok(Self {
            child,
            port,
            log,
            namespace: namespace.to_owned(),
            finished: false,
        })
    }

    /// GET `path` from the operator's metrics endpoint (HTTP/1.0; headers included).
    pub fn get(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    }

    /// Sum of a counter over all its label sets.
    pub fn counter(&self, name: &str) -> Result<f64> {
        let text = self.get("/metrics")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Kills the process (SIGKILL) without cleaning up: a crash, as far as the cluster can tell.
    pub fn kill(mut self) {
        self.finished = true;
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited (with its exit status and log).
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("the operator exited ({status}):\n{}", self.logs()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // A failed test never reaches `finish`: delete its LlamaDeployments while this operator can still run
        // their finalizers, so the namespace (and the fake GPUs its pods hold) does not linger.
        if !self.finished {
            let _ = run_tool(
                "kubectl",
                &[
                    "delete",
                    "llamadeployments",
                    "--all",
                    "-n",
                    &self.namespace,
                    "--timeout=30s",
                ],
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.finished {
            let _ = run_tool(
                "kubectl",
                &["delete", "namespace", &self.namespace, "--wait=false"],
            );
        }
    }
}

/// Deletes every LlamaDeployment of the test while the operator still runs (its finalizer needs it), then
/// stops the operator and deletes the namespace.
pub async fn finish(mut op: Operator, client: &Client, ns: TestNamespace) -> Result<()> {
    let api = lds(client, &ns.name);
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for(
        "every LlamaDeployment deleted (finalizers done)",
        Duration::from_secs(60),
        || async {
            Ok(api
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        },
    )
    .await
    .with_context(|| op.logs())?;
    op.finished = true;
    drop(op);
    ns.cleanup().await
}

/// The `LlamaDeployment` resource, for dynamic clients.
pub fn ld_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "inference.llama-operator.dev",
            "v1alpha1",
            "LlamaDeployment",
        ),
        "llamadeployments",
    )
}

/// The `LlamaDeployment`s of a namespace.
pub fn lds(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ld_resource())
}

/// Installs (server-side applies) the generated CRD and waits until it is established.
pub async fn install_crd() -> Result<()> {
    let crd = repo_root().join("crds/llamadeployments.yaml");
    run_tool(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=e2e",
            "-f",
            &crd.to_string_lossy(),
        ],
    )?;
    run_tool(
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/llamadeployments.inference.llama-operator.dev",
        ],
    )?;
    Ok(())
}

/// A `LlamaDeployment` named `name` with `spec`.
pub fn llama(name: &str, spec: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "inference.llama-operator.dev/v1alpha1",
        "kind": "LlamaDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// Creates the LlamaDeployment `name` with `spec`.
pub async fn create(api: &Api<DynamicObject>, name: &str, spec: Value) -> Result<()> {
    api.create(&kube::api::PostParams::default(), &llama(name, spec)?)
        .await
        .with_context(|| format!("creating LlamaDeployment {name}"))?;
    Ok(())
}

/// A small CPU deployment (SmolLM2-135M from a URL) that fits the fake CPU node.
pub fn smollm_spec() -> Value {
    json!({
        "model": {"url": "https://example.invalid/SmolLM2-135M-Instruct-Q8_0.gguf", "heads": 9, "kvHeads": 3,
                  "layers": 30, "hiddenSize": 576, "sizeBytes": 144810368, "contextLength": 8192},
        "accelerator": "CPU",
        "resources": {"cpu": "1", "memory": "1Gi"},
    })
}

/// (status, reason, message) of the condition of `type_`, if present.
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let conds = obj.data.get("status")?.get("conditions")?.as_array()?;
    let c = conds.iter().find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Waits for the Ready condition to have `status`; returns (reason, message).
pub async fn wait_ready(
    api: &Api<DynamicObject>,
    name: &str,
    status: &str,
    timeout: Duration,
) -> Result<(String, String)> {
    let result = wait_for(
        &format!("LlamaDeployment {name} Ready={status}"),
        timeout,
        || async {
            let obj = api.get(name).await?;
            Ok(condition(&obj, "Ready")
                .filter(|(s, _, _)| s == status)
                .map(|(_, r, m)| (r, m)))
        },
    )
    .await;
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            let last = api
                .get(name)
                .await
                .map(|o| o.data["status"].to_string())
                .unwrap_or_default();
            Err(e.context(format!("last status of {name}: {last}")))
        }
    }
}

/// The serving pods of a `LlamaDeployment` (by the operator's selector label).
pub async fn pods_of(client: &Client, ns: &str, name: &str) -> Result<Vec<Pod>> {
    let sel = format!("inference.llama-operator.dev/deployment={name}");
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&sel))
        .await?
        .items)
}

/// (reason, note) of the Warning events about the `LlamaDeployment` `name` (events.k8s.io).
pub async fn warning_events(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Vec<(String, String)>> {
    events_of(client, ns, name, "Warning").await
}

/// (reason, note) of the events of `type_` (`Normal`, `Warning`) about the `LlamaDeployment` `name`.
pub async fn events_of(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<Vec<(String, String)>> {
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some(type_))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("LlamaDeployment") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}
