//! Memory limits on the real node (cgroup v1, enforced by the kubelet): the server sizes itself from its
//! container's limit (and its threads from the CPU quota); a pod with just enough memory serves a 16-stream
//! burst, then 16 streams of JSON-schema requests (the grammar engine's tables built inside the limit), without
//! an OOM kill; a spec that cannot fit is refused by the operator with the arithmetic; and one
//! forced past validation (no declared sizes) exits before ready with the same arithmetic in its termination
//! message, which the operator's `Degraded` condition quotes with the exit code — never an OOM kill after
//! ready. `e2e/run.sh` runs this file after `tests/real_node.rs`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::operator::{Operator, create, finish, install_crd, lds, pods_of, wait_ready};
use e2e::real_node::{RealNode, bench_serve, server_memory_cgroup, server_restarts, service_base};
use e2e::{TestNamespace, client, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const MODEL: &str = "smollm2";
const MIB: u64 = 1 << 20;

/// A CPU spec of the real SmolLM2 file on the PVC, declaring its real sizes (or not), with `memory` MiB.
fn spec(node: &RealNode, memory_mib: u64, declared: bool) -> Result<Value> {
    let path = std::path::Path::new(&node.model_dir).join(&node.model_file);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("model file {}", path.display()))?
        .len();
    let mut model = json!({"pvc": {"claimName": "models", "path": node.model_file}});
    if declared {
        for (k, v) in [
            ("heads", json!(9)),
            ("kvHeads", json!(3)),
            ("layers", json!(30)),
            ("hiddenSize", json!(576)),
            ("sizeBytes", json!(size)),
        ] {
            model[k] = v;
        }
    }
    let mut s = node.spec(model);
    let obj = s.as_object_mut().context("spec is an object")?;
    obj.remove("kvCacheMemory"); // sized by the server from the limit
    s["resources"]["memory"] = json!(format!("{memory_mib}Mi"));
    s["maxBatchSize"] = json!(16);
    s["maxSeqLen"] = json!(2048);
    s["maxBatchedTokens"] = json!(256);
    Ok(s)
}

/// The smallest whole MiB the operator's own validation accepts for the declared spec.
fn smallest_fitting_mib(node: &RealNode) -> Result<u64> {
    let fits = |mib: u64| -> Result<bool> {
        let s: llama_operator::crd::LlamaDeploymentSpec =
            serde_json::from_value(spec(node, mib, true)?)?;
        Ok(llama_operator::hardware::validate(&s, &[]).is_ok())
    };
    let (mut lo, mut hi) = (1u64, 4096u64);
    ensure!(fits(hi)?, "the spec does not fit even 4 GiB");
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(mid)? { hi = mid } else { lo = mid + 1 }
    }
    Ok(lo)
}

/// 16 streams of 64-token requests from `llama-server bench-serve` against `addr` (plus `flags`); its table is
/// printed, and a failed request fails the test naming `what`.
async fn burst(addr: &str, what: &str, flags: &[&str]) -> Result<()> {
    let mut all = vec!["--concurrency", "16", "--max-tokens", "64"];
    all.extend_from_slice(flags);
    let (mut bench, log) = bench_serve(addr, MODEL, &all)?;
    let status = tokio::task::spawn_blocking(move || bench.wait()).await??;
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{out}");
    ensure!(status.success(), "{what} failed: {out}");
    Ok(())
}

/// `GET path` on `host:port` over plain HTTP/1.0; the body.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn cgroup_value(dir: &std::path::Path, file: &str) -> Result<u64> {
    let text = std::fs::read_to_string(dir.join(file))
        .with_context(|| format!("reading {}", dir.join(file).display()))?;
    Ok(text.trim().parse()?)
}

fn oom_kills(dir: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(dir.join("memory.oom_control"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .context("no oom_kill line in memory.oom_control")
}

/// The server container's last termination (reason, exit code, message), current or previous.
fn last_termination(pod: &Pod) -> Option<(String, i32, String)> {
    let c = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "server")?;
    let t = c
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .or_else(|| c.last_state.as_ref()?.terminated.clone())?;
    Some((
        t.reason.unwrap_or_default(),
        t.exit_code,
        t.message.unwrap_or_default(),
    ))
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_node_memory_limits_size_the_server_and_what_cannot_fit_is_refused_or_exits_with_the_arithmetic()
-> Result<()> {
    let node = RealNode::from_env()?;
    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "memory").await?;
    let op = Operator::start(&ns.name, "memory")?;
    let api = lds(&client, &ns.name);
    let pv = node.model_volume(&client, &ns.name).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);

    let fit_mib = smallest_fitting_mib(&node)?;
    eprintln!("the operator's smallest memory for the spec: {fit_mib} MiB");

    // 1. Just large enough: Ready, sized from the limit, a 16-stream burst without an OOM kill. Its CPU limit
    //    of 1.5 cores is not a whole number, so the operator passes no --threads: the server takes the
    //    quota, rounded down.
    let mut fits = spec(&node, fit_mib, true)?;
    fits["resources"]["cpu"] = json!("1500m");
    create(&api, "fits", fits).await?;
    wait_ready(&api, "fits", "True", READY_TIMEOUT)
        .await
        .with_context(|| op.logs())?;
    let pod = pods_of(&client, &ns.name, "fits")
        .await?
        .into_iter()
        .next()
        .context("no pod")?;
    let uid = pod.metadata.uid.clone().context("pod uid")?;
    let cg = server_memory_cgroup(&uid)?;
    let limit = cgroup_value(&cg, "memory.limit_in_bytes")?;
    ensure!(
        limit == fit_mib * MIB,
        "container limit {limit} ≠ {fit_mib} MiB"
    );
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod IP")?;
    let metrics = http_get(&format!("{pod_ip}:8000"), "/metrics")?;
    let seen = sample(&metrics, "llama_memory_budget_bytes", "part=\"limit\"");
    ensure!(
        seen == Some(limit as f64),
        "the server reports limit {seen:?}, the cgroup says {limit}:\n{metrics}"
    );
    let threads = sample(&metrics, "llama_compute_threads", "");
    ensure!(
        threads == Some(1.0),
        "a 1.5-core quota should give 1 compute thread, the server reports {threads:?}"
    );
    let kv = sample(&metrics, "llama_memory_budget_bytes", "part=\"kv_cache\"").unwrap_or(0.0);
    let idle = cgroup_value(&cg, "memory.usage_in_bytes")?;
    let base = service_base(&client, &ns.name, "fits").await?;
    let addr = base.trim_end_matches("/v1").to_owned();
    burst(
        &addr,
        "the 16-stream burst",
        &["--requests", "48", "--mixed"],
    )
    .await?;
    // then 16 streams of JSON-schema requests: the grammar engine's tables are built on the first one, inside
    // the same limit (the headroom counts them)
    let before_grammar = cgroup_value(&cg, "memory.usage_in_bytes")?;
    burst(
        &addr,
        "the 16-stream constrained burst",
        &[
            "--requests",
            "32",
            "--json-schema",
            r#"{"type":"object","properties":{"story":{"type":"string","minLength":2000}},"required":["story"]}"#,
        ],
    )
    .await?;
    let after_grammar = cgroup_value(&cg, "memory.usage_in_bytes")?;
    eprintln!(
        "constrained burst: cgroup usage {} MiB before, {} MiB after",
        before_grammar / MIB,
        after_grammar / MIB
    );
    let peak = cgroup_value(&cg, "memory.max_usage_in_bytes")?;
    let rss_peak = std::fs::read_to_string(cg.join("memory.stat"))?
        .lines()
        .find_map(|l| l.strip_prefix("total_rss ")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "pod limit {} MiB: KV cache {:.0} MiB; cgroup usage idle {} MiB, peak {} MiB (page cache included), \
         anonymous after the burst {} MiB",
        limit / MIB,
        kv / MIB as f64,
        idle / MIB,
        peak / MIB,
        rss_peak / MIB
    );
    ensure!(oom_kills(&cg)? == 0, "the container was OOM-killed");
    let pod = pods
        .get(pod.metadata.name.as_deref().unwrap_or_default())
        .await?;
    ensure!(
        server_restarts(&pod) == 0,
        "the server restarted: {:?}",
        pod.status
    );
    ensure!(
        last_termination(&pod).is_none(),
        "the server terminated: {:?}",
        pod.status
    );

    // 2. 32 MiB short: the operator refuses with the arithmetic, and plans no pod.
    create(&api, "too-small", spec(&node, fit_mib - 32, true)?).await?;
    let (reason, message) = wait_ready(&api, "too-small", "False", READY_TIMEOUT).await?;
    let (reason, message) = if reason == "InsufficientMemory" {
        (reason, message)
    } else {
        wait_for(
            "Ready=False InsufficientMemory",
            Duration::from_secs(60),
            || async {
                let obj = api.get("too-small").await?;
                Ok(e2e::operator::condition(&obj, "Ready")
                    .filter(|(_, r, _)| r == "InsufficientMemory")
                    .map(|(_, r, m)| (r, m)))
            },
        )
        .await?
    };
    eprintln!("too-small: {reason}: {message}");
    ensure!(
        message.contains("does not fit in")
            && message.contains(&format!("(resources.memory {}Mi)", fit_mib - 32))
            && message.contains("headroom"),
        "{message}"
    );
    ensure!(
        pods_of(&client, &ns.name, "too-small").await?.is_empty(),
        "a pod was planned for a spec that cannot fit"
    );

    // 3. The same memory without declared sizes: the operator cannot check, the pod starts, and the server
    //    exits before ready with the arithmetic in its termination message — no OOM kill.
    create(&api, "forced", spec(&node, fit_mib - 32, false)?).await?;
    let (reason, code, message) = wait_for(
        "the forced pod's server to exit",
        Duration::from_secs(180),
        || async {
            let pods = pods_of(&client, &ns.name, "forced").await?;
            Ok(pods.iter().find_map(last_termination))
        },
    )
    .await?;
    eprintln!("forced: {reason} (exit {code}): {message}");
    ensure!(
        reason != "OOMKilled",
        "the server was OOM-killed: {message}"
    );
    ensure!(code == 1, "exit code {code}");
    if !(message.contains("do not fit in the memory this server may use")
        && message.contains("container memory limit"))
    {
        bail!("the termination message does not carry the arithmetic: {message:?}");
    }
    // The operator says the same in the LlamaDeployment's Degraded condition once the pod crash-loops.
    let (_, degraded) = wait_for(
        "Degraded=True with the server's exit code and reason",
        Duration::from_secs(180),
        || async {
            let obj = api.get("forced").await?;
            Ok(e2e::operator::condition(&obj, "Degraded")
                .filter(|(s, _, m)| {
                    s == "True" && m.contains("exit code 1: llama-server serve: the model")
                })
                .map(|(_, r, m)| (r, m)))
        },
    )
    .await?;
    eprintln!("forced, Degraded: {degraded}");
    ensure!(degraded.contains("does not fit in"), "{degraded}");
    let forced = pods_of(&client, &ns.name, "forced").await?;
    ensure!(
        forced.iter().all(|p| !p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))),
        "the forced pod reported ready"
    );

    finish(op, &client, ns).await?;
    Api::<PersistentVolume>::all(client.clone())
        .delete(&pv, &DeleteParams::default())
        .await?;
    Ok(())
}
