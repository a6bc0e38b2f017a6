//! Disruptions of the control plane itself: the local kube-apiserver is restarted under a running operator.
//!
//! These tests stop the apiserver every other test talks to, so they never run beside other tests:
//! `e2e/run.sh` runs this binary alone, after the others, with `--test-threads=1` and
//! `E2E_APISERVER_RESTARTS=1` (without it they skip). Against an existing cluster (`E2E_EXISTING_CLUSTER=1`)
//! they skip too: we cannot restart a user's apiserver.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::operator::{
    MANAGED, Operator, condition, finish, install_crd, lds, llama, pods_of, smollm_spec, wait_ready,
};
use e2e::{TestNamespace, client, existing_cluster, repo_root, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    if existing_cluster() {
        Some(
            "E2E_EXISTING_CLUSTER=1: the apiserver of a cluster we did not start cannot be restarted",
        )
    } else if std::env::var("E2E_APISERVER_RESTARTS").as_deref() != Ok("1") {
        Some(
            "E2E_APISERVER_RESTARTS=1 is not set: restarting the apiserver would break tests running beside \
              this one (e2e/run.sh runs this binary alone)",
        )
    } else {
        None
    }
}

/// Restarts the local kube-apiserver (e2e/cluster/restart-apiserver.sh), down for at least `down_for`
/// seconds; returns how long it was unavailable.
fn restart_apiserver(down_for: u32) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/cluster/restart-apiserver.sh"))
        .arg(down_for.to_string())
        .output()
        .context("running restart-apiserver.sh")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("restart-apiserver.sh failed ({})", out.status);
    }
    Ok(started.elapsed())
}

/// Waits until `name` runs the spec of its current generation: the rollout finished (`Ready=True`,
/// `observedGeneration` = generation) and every pod carries `--max-batch-size <batch>`.
async fn wait_rolled_out(
    client: &Client,
    api: &Api<DynamicObject>,
    ns: &str,
    name: &str,
    batch: u32,
    op: &Operator,
) -> Result<()> {
    let want = batch.to_string();
    wait_for(
        &format!("{name} rolled out with --max-batch-size {batch}, Ready=True, observedGeneration current"),
        // The rollout itself waits on the controller-manager, which backs off after the outage too.
        Duration::from_secs(180),
        || async {
            let obj = api.get(name).await?;
            let current = obj.data["status"]["observedGeneration"]
                == obj.metadata.generation.map(Value::from).unwrap_or_default();
            let ready = condition(&obj, "Ready").is_some_and(|c| c.0 == "True");
            let pods = pods_of(client, ns, name).await?;
            let rolled = !pods.is_empty()
                && pods.iter().all(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.containers[0].args.clone())
                        .unwrap_or_default()
                        .windows(2)
                        .any(|w| w[0] == "--max-batch-size" && w[1] == want)
                });
            Ok((current && ready && rolled).then_some(()))
        },
    )
    .await
    .with_context(|| op.logs())
}

/// Exactly one Deployment and one Service (and no PDB for one replica) for the one LlamaDeployment.
async fn assert_one_set_of_children(client: &Client, ns: &str) -> Result<()> {
    let managed = ListParams::default().labels(MANAGED);
    let names = |items: Vec<Option<String>>| items.into_iter().flatten().collect::<Vec<_>>();
    let deps = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&managed)
        .await?;
    let svcs = Api::<Service>::namespaced(client.clone(), ns)
        .list(&managed)
        .await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .list(&managed)
        .await?;
    assert_eq!(
        names(deps.items.into_iter().map(|d| d.metadata.name).collect()),
        ["d"],
        "one Deployment"
    );
    assert_eq!(
        names(svcs.items.into_iter().map(|s| s.metadata.name).collect()),
        ["d"],
        "one Service"
    );
    assert!(pdbs.items.is_empty(), "no PDB for one replica");
    Ok(())
}

async fn set_batch(api: &Api<DynamicObject>, batch: u32) -> Result<()> {
    api.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxBatchSize": batch}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn disruption_apiserver_restarts_are_survived_without_duplicates_or_hot_loop() -> Result<()> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return Ok(());
    }
    install_crd().await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "op-disrupt").await?;
    let mut op = Operator::start(&ns.name, "only")?;
    let pid = op.pid();
    let api = lds(&client, &ns.name);
    api.create(&PostParams::default(), &llama("d", smollm_spec())?)
        .await?;
    wait_ready(&api, "d", "True", Duration::from_secs(90)).await?;

    // 1. A spec change, and the apiserver goes away while the operator works on it. The operator's watches
    //    and requests fail; it must reconnect by itself and finish the rollout.
    set_batch(&api, 4).await?;
    let down = restart_apiserver(0)?;
    let since = Instant::now();
    wait_rolled_out(&client, &api, &ns.name, "d", 4, &op).await?;
    eprintln!(
        "quick restart: apiserver unavailable {down:?}; spec change landed {:?} after it was back",
        since.elapsed()
    );
    op.ensure_running()?;
    assert_one_set_of_children(&client, &ns.name).await?;

    // 2. An outage longer than the Lease can go unrenewed (15 s lease, renewed every 5 s, given up after 10 s
    //    without a renewal): the operator gives up leadership, stops its controller, campaigns again and wins
    //    its own Lease back -- the same process, no standby involved. Then it must act again: a deleted
    //    Service comes back (no rollout needed, so this does not wait on the controller-manager's recovery).
    let lost = |op: &Operator| op.logs().matches("lost leadership").count();
    let lost_before = lost(&op);
    let down = restart_apiserver(10)?;
    let since = Instant::now();
    wait_for(
        "the operator to lead again",
        Duration::from_secs(60),
        || async { Ok((op.counter("llama_operator_leader")? == 1.0).then_some(())) },
    )
    .await
    .with_context(|| op.logs())?;
    eprintln!(
        "long outage: apiserver unavailable {down:?}; leading again {:?} after it was back",
        since.elapsed()
    );
    assert!(
        lost(&op) > lost_before,
        "an outage of {down:?} must cost the leadership:\n{}",
        op.logs()
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get("llama-operator-leader")
        .await?;
    let spec = lease.spec.context("Lease spec")?;
    assert_eq!(spec.holder_identity.as_deref(), Some("only"), "{spec:?}");
    let services = Api::<Service>::namespaced(client.clone(), &ns.name);
    let old_uid = services.get("d").await?.metadata.uid;
    services.delete("d", &Default::default()).await?;
    wait_for(
        "the re-elected operator to recreate the deleted Service",
        Duration::from_secs(30),
        || async {
            let svc = services.get_opt("d").await?;
            Ok(svc
                .filter(|s| s.metadata.uid != old_uid && s.metadata.deletion_timestamp.is_none())
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| op.logs())?;
    wait_ready(&api, "d", "True", Duration::from_secs(30)).await?;
    op.ensure_running()?;
    assert_eq!(op.pid(), pid, "the same operator process throughout");
    assert_one_set_of_children(&client, &ns.name).await?;

    // 3. Settled after the outages: the reconcile count stays bounded (no hot loop).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = op.counter("llama_operator_reconciles_total")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let b = op.counter("llama_operator_reconciles_total")?;
    let errors = op.counter("llama_operator_reconcile_errors_total")?;
    eprintln!(
        "reconciles in total {b} ({errors} failed during the outages); {} in the 10 s quiet window",
        b - a
    );
    // One object: real events (kwok node heartbeats flapping under load) add a few; a hot loop adds hundreds.
    assert!(
        b - a <= 10.0,
        "reconciles kept running while idle: {a} -> {b}\n{}",
        op.logs()
    );
    finish(op, &client, ns).await
}
