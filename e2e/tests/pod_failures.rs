//! Pod-level failures surface on the LlamaDeployment: `Degraded=True` and `Ready=False` with the failure as
//! the reason, a message naming the pod and what went wrong, and a Warning event. The failures are staged by
//! the local cluster's extra kwok stage (`e2e/cluster/kwok-stages/pod-failures.yaml`): pods whose server image
//! is `e2e.invalid/{crashloop,oom,imagepull}:1` report what a kubelet would. Unschedulable needs no kwok.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::operator::{
    Operator, condition, finish, install_crd, lds, llama, pods_of, smollm_spec, wait_ready,
    warning_events,
};
use e2e::{TestNamespace, client, existing_cluster, wait_for};
use kube::api::PostParams;
use serde_json::json;

/// One LlamaDeployment that must fail: its name, what to change in the spec, the expected reason and a
/// fragment of the expected message.
struct Case {
    name: &'static str,
    spec: serde_json::Value,
    reason: &'static str,
    message: &'static str,
}

fn with_image(image: &str) -> serde_json::Value {
    let mut spec = smollm_spec();
    spec["image"] = json!(image);
    spec
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn operator_reports_pod_failures_as_conditions_and_warning_events() -> Result<()> {
    install_crd().await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "op-podfail").await?;
    let op = Operator::start(&ns.name, "a")?;
    let api = lds(&client, &ns.name);

    let mut too_big = smollm_spec();
    too_big["resources"]["memory"] = json!("64Ti");
    let mut cases = vec![Case {
        name: "unschedulable",
        spec: too_big,
        reason: "Unschedulable",
        message: "Insufficient memory",
    }];
    if existing_cluster() {
        eprintln!(
            "skipping CrashLoopBackOff/OOMKilled/ImagePullBackOff: they are staged by the local cluster's kwok \
             stages (e2e/cluster/kwok-stages), which an existing cluster does not have"
        );
    } else {
        cases.extend([
            Case {
                name: "crashloop",
                spec: with_image("e2e.invalid/crashloop:1"),
                reason: "CrashLoopBackOff",
                message: "container server: back-off 1m20s restarting failed container=server",
            },
            Case {
                name: "oom",
                spec: with_image("e2e.invalid/oom:1"),
                reason: "OOMKilled",
                message: "container server was killed for exceeding its memory limit (restarts: 3)",
            },
            Case {
                name: "imagepull",
                spec: with_image("e2e.invalid/imagepull:1"),
                reason: "ImagePullBackOff",
                message: "container server: Back-off pulling image \"e2e.invalid/imagepull:1\"",
            },
        ]);
    }
    for case in &cases {
        api.create(
            &PostParams::default(),
            &llama(case.name, case.spec.clone())?,
        )
        .await?;
    }

    for case in &cases {
        let degraded = wait_for(
            &format!("{} Degraded=True {}", case.name, case.reason),
            Duration::from_secs(60),
            || async {
                let obj = api.get(case.name).await?;
                Ok(condition(&obj, "Degraded").filter(|c| c.0 == "True" && c.1 == case.reason))
            },
        )
        .await
        .with_context(|| op.logs())?;
        let pods = pods_of(&client, &ns.name, case.name).await?;
        let pod = pods
            .first()
            .and_then(|p| p.metadata.name.clone())
            .context("a serving pod")?;
        let message = degraded.2;
        assert!(
            message.starts_with(&format!("pod {pod}: ")) && message.contains(case.message),
            "{}: Degraded message {message:?} should name pod {pod} and contain {:?}",
            case.name,
            case.message
        );
        let (reason, ready_message) =
            wait_ready(&api, case.name, "False", Duration::from_secs(10)).await?;
        assert_eq!(reason, case.reason, "{}: {ready_message}", case.name);
        assert!(
            ready_message.contains(&format!("pod {pod}: ")) && ready_message.contains(case.message),
            "{}: Ready message {ready_message:?}",
            case.name
        );
        let events = wait_for(
            &format!("a Warning event {} about {}", case.reason, case.name),
            Duration::from_secs(20),
            || async {
                let events = warning_events(&client, &ns.name, case.name).await?;
                Ok(events
                    .iter()
                    .any(|(r, note)| r == case.reason && note.contains(&pod))
                    .then_some(events))
            },
        )
        .await?;
        eprintln!("{}: {message}\n  events: {events:?}", case.name);
    }
    finish(op, &client, ns).await
}
