//! Helpers for tests that run real serving pods on the local cluster's real node (kubelet + containerd, see
//! `e2e/cluster/node-*.sh`): where the node and the model server are, what a pod must say to land there, and
//! what an application does against the Service (the official `openai` Python client).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::repo_root;

/// Label (and taint key) that marks the real node; only pods that select and tolerate it land there.
pub const REAL_NODE_LABEL: &str = "llama-operator.dev/real-node";

/// What `e2e/run.sh` tells the tests about the real node, the model and the images it loaded.
#[derive(Debug, Clone)]
pub struct RealNode {
    /// Node name (`E2E_REAL_NODE`).
    pub node: String,
    /// URL pods fetch the default GGUF from (`E2E_MODEL_URL`, the cluster's model server).
    pub model_url: String,
    /// Its SHA-256 (`E2E_MODEL_SHA256`).
    pub model_sha256: String,
    /// Host directory holding the GGUF, for a hostPath PersistentVolume (`E2E_MODEL_DIR`).
    pub model_dir: String,
    /// File name of the GGUF in that directory.
    pub model_file: String,
    /// Modelcar image built by `make model-image` and loaded into the node (`E2E_MODELCAR_IMAGE`).
    pub modelcar_image: String,
    /// Python with the `openai` package (`E2E_PYTHON`).
    pub python: PathBuf,
}

fn env(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .with_context(|| {
            format!(
                "{name} is not set: the real-node tests run from e2e/run.sh, which starts the real node, \
                 builds and loads the images and exports {name}"
            )
        })
}

impl RealNode {
    /// Reads the environment `e2e/run.sh` exports; an error says what is missing.
    pub fn from_env() -> Result<Self> {
        let model_url = env("E2E_MODEL_URL")?;
        let model_file = model_url.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(Self {
            node: env("E2E_REAL_NODE")?,
            model_url,
            model_sha256: env("E2E_MODEL_SHA256")?,
            model_dir: env("E2E_MODEL_DIR")?,
            model_file,
            modelcar_image: env("E2E_MODELCAR_IMAGE")?,
            python: PathBuf::from(env("E2E_PYTHON")?),
        })
    }

    /// `nodeSelector` and `tolerations` that put a pod on the real node.
    pub fn placement(&self) -> (Value, Value) {
        (
            json!({ REAL_NODE_LABEL: "true" }),
            json!([{ "key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule" }]),
        )
    }

    /// A small CPU LlamaDeployment of SmolLM2 for the real node, with the given model source.
    pub fn spec(&self, model: Value) -> Value {
        let (node_selector, tolerations) = self.placement();
        let mut model = model;
        model["name"] = json!("smollm2");
        json!({
            "model": model,
            "quantization": "Q4_1",
            "accelerator": "CPU",
            // No CPU request: four pods and a rollout surge share the node's two cores.
            "resources": {"memory": "1Gi"},
            "maxBatchSize": 8,
            "maxSeqLen": 1024,
            "maxBatchedTokens": 256,
            "kvCacheMemory": "64Mi",
            "drainTimeoutSeconds": 20,
            "nodeSelector": node_selector,
            "tolerations": tolerations,
        })
    }

    /// A hostPath PersistentVolume holding the model directory, bound to a claim `models` in `ns`.
    pub async fn model_volume(&self, client: &kube::Client, ns: &str) -> Result<String> {
        let pv_name = format!("{ns}-models");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv_name, "labels": {"llama-operator.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": self.model_dir, "type": "Directory"},
                "claimRef": {"namespace": ns, "name": "models"},
            }
        }))?;
        Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "models"},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            }
        }))?;
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &pvc)
            .await?;
        Ok(pv_name)
    }

    /// The `url` source: our own fetcher downloads from the cluster's model server and checks the SHA-256.
    pub fn url_model(&self) -> Value {
        json!({"url": self.model_url, "sha256": self.model_sha256})
    }

    /// Runs the `openai` client once against `base` (`http://<ClusterIP>:8000/v1`); returns the answer.
    pub fn chat_once(&self, base: &str, model: &str) -> Result<String> {
        let out = Command::new(&self.python)
            .arg(clients_script())
            .args(["once", "--base", base, "--model", model])
            .output()
            .context("running the openai client")?;
        if !out.status.success() {
            bail!(
                "chat completion via {base} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("client output")?;
        Ok(v["content"].as_str().unwrap_or_default().to_owned())
    }

    /// Starts a client streaming chat completions back to back against `base` until [`StreamLoop::stop`].
    pub fn stream_loop(&self, base: &str, model: &str) -> Result<StreamLoop> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("e2e-stream-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let stop = dir.join("stop");
        let out = dir.join("summary.json");
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(&out);
        let child = Command::new(&self.python)
            .arg(clients_script())
            .args(["stream-loop", "--base", base, "--model", model])
            .arg("--stop-file")
            .arg(&stop)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the streaming client")?;
        Ok(StreamLoop { child, stop, out })
    }
}

fn clients_script() -> PathBuf {
    repo_root().join("e2e/clients/openai_chat.py")
}

/// A client streaming chat completions in a loop (see `e2e/clients/openai_chat.py`).
pub struct StreamLoop {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

/// What the streaming client saw.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    /// Error responses the SDK retried on its own (a draining pod's 503 + `Connection: close`).
    pub retried: Vec<String>,
}

impl StreamLoop {
    /// Lets the current stream finish, then returns the counts.
    pub fn stop(mut self) -> Result<StreamSummary> {
        std::fs::write(&self.stop, b"")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the streaming client did not stop within 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&self.out)?)?;
        Ok(StreamSummary {
            ok: v["ok"].as_u64().unwrap_or_default(),
            failed: v["failed"].as_u64().unwrap_or_default(),
            errors: strings(&v["errors"]),
            retried: strings(&v["retried_responses"]),
        })
    }
}

impl Drop for StreamLoop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_secs(1));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The strings of a JSON array (nothing for anything else).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// `http://<ClusterIP>:<port>/v1` of the Service named `name` (reachable from the host through kube-proxy).
pub async fn service_base(client: &Client, ns: &str, name: &str) -> Result<String> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let spec = svc.spec.context("service spec")?;
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .context("the Service has no ClusterIP")?;
    let port = spec
        .ports
        .and_then(|p| p.first().map(|p| p.port))
        .context("the Service has no port")?;
    Ok(format!("http://{ip}:{port}/v1"))
}

/// Restart count of the `server` container of `pod`.
pub fn server_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "server"))
        .map(|c| c.restart_count)
        .unwrap_or_default()
}

/// SIGKILLs the `llama-server serve` process of the pod with `uid` on this host (the real node runs here).
/// Returns the pid it killed.
pub fn sigkill_server(uid: &str) -> Result<i32> {
    signal_server(uid, "KILL")
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to the `llama-server serve` process of the pod with `uid` on
/// this host: found by its cgroup path, which names the pod UID. Returns the pid.
pub fn signal_server(uid: &str, signal: &str) -> Result<i32> {
    let pid = server_pid(uid)?;
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(pid)
}

/// The memory cgroup directory (cgroup v1, as on the real node) of the `llama-server serve` container of the
/// pod with `uid`, read from the server process's `/proc/<pid>/cgroup`.
pub fn server_memory_cgroup(uid: &str) -> Result<PathBuf> {
    let pid = server_pid(uid)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        })
        .with_context(|| format!("no memory cgroup in /proc/{pid}/cgroup:\n{text}"))?;
    Ok(PathBuf::from(format!("/sys/fs/cgroup/memory{path}")))
}

/// The pid of the `llama-server serve` process of the pod with `uid` on this host (by its cgroup path, which
/// names the pod UID).
pub fn server_pid(uid: &str) -> Result<i32> {
    let needle = uid.replace('-', "_");
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !(cgroup.contains(uid) || cgroup.contains(&needle)) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_server = args.first().is_some_and(|a| a.ends_with(b"llama-server"))
            && args.get(1).is_some_and(|a| *a == b"serve");
        if is_server {
            return Ok(pid);
        }
    }
    bail!("no llama-server serve process found in the cgroup of pod {uid}")
}

/// The host's `llama-server` binary (for `bench-serve`): `$LLAMA_SERVER_BIN`, else the release build that
/// `scripts/build-images.sh` made in `$CARGO_TARGET_DIR`, else in `<workspace>/target`.
pub fn server_bin() -> Result<PathBuf> {
    let candidates = [
        std::env::var_os("LLAMA_SERVER_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/llama-server")),
        Some(repo_root().join("target/release/llama-server")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .context("llama-server binary not found: e2e/run.sh builds it with scripts/build-images.sh")
}

/// Starts `llama-server bench-serve` (the load generator) against `addr` (`http://<ClusterIP>:<port>`) with
/// extra flags; its output goes to a log file in the temp dir, returned with the child.
pub fn bench_serve(addr: &str, model: &str, flags: &[&str]) -> Result<(Child, PathBuf)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!("e2e-bench-{}-{n}.log", std::process::id()));
    let out = std::fs::File::create(&log)?;
    let child = Command::new(server_bin()?)
        .args([
            "bench-serve",
            "--addr",
            addr,
            "--model",
            model,
            "--warmup",
            "0",
        ])
        .args(flags)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting llama-server bench-serve")?;
    Ok((child, log))
}
