//! The Helm chart: lints, renders, passes `kubectl apply --dry-run=server`, installs with namespaced RBAC,
//! and grants the operator's service account what it needs and nothing more.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::{TestNamespace, client, existing_cluster, run_tool, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

fn chart() -> String {
    e2e::repo_root()
        .join("charts/llama-operator")
        .to_string_lossy()
        .into_owned()
}

fn can_i(sa: &str, ns: &str, verb: &str, resource: &str) -> Result<bool> {
    let out = std::process::Command::new(e2e::tool("kubectl"))
        .args([
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            &format!("--as={sa}"),
        ])
        .output()
        .context("kubectl auth can-i")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn operator_chart_lints_renders_and_installs_with_least_privilege() -> Result<()> {
    run_tool("helm", &["lint", "--strict", &chart()])?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "op-chart").await?;
    let release = format!("e2e-{}", ns.name);

    // The full chart (CRD included) is accepted by the real apiserver.
    let all = run_tool(
        "helm",
        &["template", &release, &chart(), "--namespace", &ns.name],
    )?;
    let file = std::env::temp_dir().join(format!("{release}-all.yaml"));
    std::fs::write(&file, &all)?;
    run_tool(
        "kubectl",
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            &file.to_string_lossy(),
        ],
    )?;

    // A namespaced install (CRD left to the suite) really runs: RBAC applies and the operator pod schedules.
    let ns_only = run_tool(
        "helm",
        &[
            "template",
            &release,
            &chart(),
            "--namespace",
            &ns.name,
            "--set",
            "crds.enabled=false",
            "--set",
            &format!("watchNamespace={}", ns.name),
        ],
    )?;
    let file = std::env::temp_dir().join(format!("{release}.yaml"));
    std::fs::write(&file, &ns_only)?;
    run_tool(
        "kubectl",
        &["apply", "--server-side", "-f", &file.to_string_lossy()],
    )?;
    // On kwok nodes the pod goes Running without pulling the (unpublished) image.
    if !existing_cluster() {
        let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
        let selector = ListParams::default().labels("app.kubernetes.io/name=llama-operator");
        wait_for(
            "the operator pod Running",
            Duration::from_secs(60),
            || async {
                let list = pods.list(&selector).await?;
                let running = list
                    .items
                    .iter()
                    .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
                Ok(running.then_some(()))
            },
        )
        .await?;
    }

    let sa = format!("system:serviceaccount:{}:{release}-llama-operator", ns.name);
    for (verb, resource) in [
        ("watch", "llamadeployments.inference.llama-operator.dev"),
        (
            "patch",
            "llamadeployments.inference.llama-operator.dev/status",
        ),
        ("create", "deployments.apps"),
        ("delete", "poddisruptionbudgets.policy"),
        ("watch", "networkpolicies.networking.k8s.io"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("list", "nodes"),
        ("create", "events.events.k8s.io"),
        ("update", "leases.coordination.k8s.io"),
    ] {
        assert!(
            can_i(&sa, &ns.name, verb, resource)?,
            "{sa} must be allowed to {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("delete", "nodes"),
        ("delete", "pods"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !can_i(&sa, &ns.name, verb, resource)?,
            "{sa} must not be allowed to {verb} {resource}"
        );
    }
    assert!(
        !can_i(&sa, "default", "create", "deployments.apps")?,
        "namespaced install stays in its namespace"
    );

    // The chart's aggregated roles: a user with the built-in `view` reads LlamaDeployments and cannot write
    // them; `edit` writes and scales them (the clusterrole-aggregation controller merges the rules).
    for (user, role) in [("alice", "view"), ("bob", "edit")] {
        run_tool(
            "kubectl",
            &[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                "-n",
                &ns.name,
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
            ],
        )?;
    }
    let ld = "llamadeployments.inference.llama-operator.dev";
    let scale = "llamadeployments.inference.llama-operator.dev/scale";
    wait_for(
        "view and edit aggregate the LlamaDeployment rules",
        Duration::from_secs(60),
        || async {
            Ok(
                (can_i("alice", &ns.name, "list", ld)? && can_i("bob", &ns.name, "create", ld)?)
                    .then_some(()),
            )
        },
    )
    .await?;
    assert!(can_i("alice", &ns.name, "get", scale)?, "view reads /scale");
    assert!(
        !can_i("alice", &ns.name, "create", ld)?,
        "view must not create"
    );
    assert!(
        !can_i("alice", &ns.name, "update", scale)?,
        "view must not scale"
    );
    assert!(can_i("bob", &ns.name, "delete", ld)?, "edit deletes");
    assert!(can_i("bob", &ns.name, "update", scale)?, "edit scales");
    assert!(
        !can_i("bob", "default", "create", ld)?,
        "a RoleBinding stays in its namespace"
    );

    run_tool(
        "kubectl",
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            &format!("{release}-llama-operator-nodes"),
            "--ignore-not-found",
        ],
    )?;
    run_tool(
        "kubectl",
        &[
            "delete",
            "clusterrole",
            &format!("{release}-llama-operator-view"),
            &format!("{release}-llama-operator-edit"),
            "--ignore-not-found",
        ],
    )?;
    ns.cleanup().await?;
    Ok(())
}
