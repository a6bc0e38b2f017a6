//! Model credentials on the real node: a gated "hub" (a test HTTP server on the node's bridge address) answers
//! 401 without a bearer token and, with it, redirects to a "CDN" on another origin, as Hugging Face does. An
//! `hf://` model with `HF_ENDPOINT` pointing at the hub and `headersSecretRef` naming a Secret with the token is
//! fetched and serves; without the Secret the LlamaDeployment says `ModelFetchFailed` with the 401. The token
//! reaches the hub only: not the CDN, not the fetch log, not the pod spec, not the LlamaDeployment's status.
//! The gated deployment also runs two replicas on a node model cache (one download between them) and carries a
//! pod-template overlay.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::operator::{Operator, create, finish, install_crd, lds, pods_of, wait_ready};
use e2e::real_node::{RealNode, service_base};
use e2e::{TestNamespace, client, run_tool, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const TOKEN: &str = "hf_e2eSecretTokenNeverLogged";

/// What a listener saw: the path and the Authorization header of each request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Reads a request's path and Authorization header.
fn read_request(s: &TcpStream) -> Option<(String, Option<String>)> {
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if h.to_ascii_lowercase().starts_with("authorization:") {
            auth = Some(h["authorization:".len()..].trim().to_owned());
        }
    }
    Some((path, auth))
}

/// Starts a listener on `ip` whose requests go to `handle`; returns its base URL and what it saw.
fn listen(
    ip: &str,
    handle: impl Fn(TcpStream, &str, Option<&str>) + Send + 'static,
) -> Result<(String, Seen)> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    let base = format!("http://{ip}:{}", listener.local_addr()?.port());
    let seen: Seen = Arc::default();
    let s2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Some((path, auth)) = read_request(&stream) else {
                continue;
            };
            s2.lock().expect("lock").push((path.clone(), auth.clone()));
            handle(stream, &path, auth.as_deref());
        }
    });
    Ok((base, seen))
}

fn empty(mut s: TcpStream, status: &str, extra: &str) {
    let _ = s.write_all(
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_node_a_gated_hf_model_is_fetched_with_the_secret_token_which_goes_nowhere_else()
-> Result<()> {
    let node = RealNode::from_env()?;
    // The node's bridge address, where pods reach the cluster's model server.
    let ip = node
        .model_url
        .split("://")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .context("no host in E2E_MODEL_URL")?
        .to_owned();
    let file = std::path::Path::new(&node.model_dir).join(&node.model_file);
    ensure!(file.is_file(), "{} is missing", file.display());

    let cdn_file = file.clone();
    let (cdn, cdn_seen) = listen(&ip, move |mut s, path, _| {
        if !path.starts_with("/blobs/model.gguf") {
            return empty(s, "404 Not Found", "");
        }
        let Ok(mut f) = File::open(&cdn_file) else {
            return empty(s, "500 Internal Server Error", "");
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = s.write_all(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(k) = f.read(&mut buf) {
            if k == 0 || s.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    })?;
    let want_path = format!("/org/gated-repo/resolve/main/{}", node.model_file);
    let redirect = format!("Location: {cdn}/blobs/model.gguf?X-Signature=e2e-signature\r\n");
    let (hub, hub_seen) = listen(&ip, move |s, path, auth| {
        if path != want_path {
            empty(s, "404 Not Found", "")
        } else if auth == Some(&format!("Bearer {TOKEN}")) {
            empty(s, "302 Found", &redirect)
        } else {
            empty(s, "401 Unauthorized", "")
        }
    })?;
    eprintln!("hub {hub}, cdn {cdn}");

    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "creds").await?;
    let op = Operator::start(&ns.name, "creds")?;
    let api = lds(&client, &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hf-token"},
        "stringData": {"Authorization": format!("Bearer {TOKEN}\n")},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;

    // The node cache directory, writable by the pods' uid (65532), as a node's setup would prepare it.
    let cache_dir = std::env::temp_dir().join(format!("llama-e2e-cache-{}", ns.name));
    std::fs::create_dir_all(&cache_dir)?;
    std::os::unix::fs::chown(&cache_dir, Some(65532), Some(65532))?;
    let spec = |with_token: bool| {
        let mut model = json!({
            "url": format!("hf://org/gated-repo/{}", node.model_file),
            "sha256": node.model_sha256,
        });
        let mut s = if with_token {
            model["headersSecretRef"] = json!({"name": "hf-token"});
            // Two replicas share a node cache: one download between them.
            model["cache"] = json!({"hostPath": cache_dir.to_string_lossy()});
            let mut s = node.spec(model);
            s["replicas"] = json!(2);
            // The pod-template overlay on a real pod: an annotation, a host alias and an extra env var.
            s["podTemplate"] = json!({
                "metadata": {"annotations": {"e2e.llama-operator.dev/overlay": "applied"}},
                "spec": {
                    "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["overlay.e2e.test"]}],
                    "containers": [{"name": "server", "env": [{"name": "OVERLAY_MARK", "value": "1"}]}],
                },
            });
            s
        } else {
            node.spec(model)
        };
        s["env"] = json!([{"name": "HF_ENDPOINT", "value": hub}]);
        s
    };
    create(&api, "no-token", spec(false)).await?;
    create(&api, "gated", spec(true)).await?;

    // With the token: fetched through the redirect, Ready, and it answers. On the way `kubectl get llama`
    // shows the phases the pod passes through (sampled, so a short one may be missed: logged, not asserted).
    let mut phases: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let obj = api.get("gated").await?;
        let phase = obj.data["status"]["phase"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !phase.is_empty() && phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if phase == "Ready" {
            break;
        }
        ensure!(
            started.elapsed() < READY_TIMEOUT,
            "gated not Ready after {READY_TIMEOUT:?} (phases {phases:?}):\n{}",
            op.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_ready(&api, "gated", "True", READY_TIMEOUT)
        .await
        .with_context(|| op.logs())?;
    let obj = api.get("gated").await?;
    let startup = &obj.data["status"]["startup"];
    eprintln!("gated: phases {phases:?}; startup {startup}");
    let secs = |k: &str| startup[k].as_f64();
    ensure!(
        matches!((secs("downloadSeconds"), secs("loadSeconds"), secs("totalSeconds")),
            (Some(d), Some(l), Some(t)) if d >= 0.0 && l > 0.0 && t + 0.2 >= d + l),
        "startup not measured: {startup}"
    );
    let table = run_tool("kubectl", &["get", "llama", "gated", "-n", &ns.name])?;
    ensure!(
        table.contains("PHASE") && table.contains("Ready"),
        "kubectl get llama: {table}"
    );
    let base = service_base(&client, &ns.name, "gated").await?;
    let answer = node.chat_once(&base, "smollm2")?;
    ensure!(!answer.trim().is_empty(), "gated: empty answer via {base}");

    // Without it: the 401 is explained on the LlamaDeployment.
    let message = wait_for(
        "no-token to report ModelFetchFailed",
        Duration::from_secs(180),
        || async {
            let obj = api.get("no-token").await?;
            Ok(e2e::operator::condition(&obj, "Ready")
                .filter(|(s, r, _)| s == "False" && r == "ModelFetchFailed")
                .map(|(_, _, m)| m))
        },
    )
    .await?;
    ensure!(message.contains("HTTP 401"), "no-token: {message}");
    eprintln!("no-token: {message}");

    // Where the token went: the hub (with it, from the gated pod), never the CDN.
    let hub_seen = hub_seen.lock().expect("lock").clone();
    let cdn_seen = cdn_seen.lock().expect("lock").clone();
    eprintln!(
        "hub saw {} request(s), cdn {}",
        hub_seen.len(),
        cdn_seen.len()
    );
    let bearer = format!("Bearer {TOKEN}");
    ensure!(
        hub_seen.iter().any(|(_, a)| a.as_deref() == Some(&bearer)),
        "the hub never got the token: {hub_seen:?}"
    );
    ensure!(
        hub_seen.iter().any(|(_, a)| a.is_none()),
        "the no-token pod never asked the hub: {hub_seen:?}"
    );
    ensure!(
        cdn_seen.len() == 1,
        "two replicas sharing a node cache downloaded {} time(s): {cdn_seen:?}",
        cdn_seen.len()
    );
    ensure!(
        cdn_seen.iter().all(|(_, a)| a.is_none()),
        "the token followed the redirect to the CDN: {cdn_seen:?}"
    );

    // Nowhere readable: the fetch container's log, the pod objects, the LlamaDeployments.
    let pod = pods_of(&client, &ns.name, "gated")
        .await?
        .into_iter()
        .next()
        .context("gated has no pod")?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    ensure!(
        pod.annotations()
            .get("e2e.llama-operator.dev/overlay")
            .map(String::as_str)
            == Some("applied"),
        "the overlay's annotation is missing: {:?}",
        pod.annotations()
    );
    let spec = pod.spec.clone().unwrap_or_default();
    ensure!(
        spec.host_aliases
            .iter()
            .flatten()
            .any(|h| h.ip == "127.0.0.1"),
        "the overlay's hostAliases are missing"
    );
    ensure!(
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "OVERLAY_MARK")
            && spec.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "HF_ENDPOINT"),
        "the server's env lost the overlay's or the spec's variable"
    );
    let log = run_tool(
        "kubectl",
        &["logs", "-n", &ns.name, &pod_name, "-c", "model-fetch"],
    )?;
    ensure!(
        log.contains("sending header(s) Authorization"),
        "fetch log: {log}"
    );
    for (what, text) in [
        ("the fetch log", log),
        (
            "the pods",
            run_tool("kubectl", &["get", "pods", "-n", &ns.name, "-o", "yaml"])?,
        ),
        (
            "the LlamaDeployments",
            run_tool("kubectl", &["get", "llama", "-n", &ns.name, "-o", "yaml"])?,
        ),
        (
            "the events",
            run_tool("kubectl", &["get", "events", "-n", &ns.name, "-o", "yaml"])?,
        ),
    ] {
        ensure!(!text.contains(TOKEN), "the token is in {what}");
        ensure!(
            !text.contains("e2e-signature"),
            "the signed CDN query is in {what}"
        );
    }
    finish(op, &client, ns).await?;
    std::fs::remove_dir_all(&cache_dir)?;
    Ok(())
}
