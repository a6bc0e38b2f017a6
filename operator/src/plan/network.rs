//! The optional NetworkPolicy of a LlamaDeployment's pods (`spec.networkPolicy`): ingress to the API port only
//! from the peers the spec lists and from the operator itself (its autoscaler reads each pod's `/metrics`).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{PlanConfig, meta, selector};
use crate::crd::LlamaDeployment;

/// The peer that lets the operator's pods in: its namespace (the well-known `kubernetes.io/metadata.name`
/// label) and the chart's pod label. `None` when the operator does not know its namespace (run outside a pod).
pub fn operator_peer(cfg: &PlanConfig) -> Option<NetworkPolicyPeer> {
    let ns = cfg.operator_namespace.as_ref()?;
    Some(NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                ns.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "llama-operator".to_owned(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The NetworkPolicy when `spec.networkPolicy` is set; `None` means: delete one if it exists.
pub fn network_policy(ld: &LlamaDeployment, cfg: &PlanConfig) -> Option<NetworkPolicy> {
    let np = ld.spec.network_policy.as_ref()?;
    let mut from = np.from.clone();
    from.extend(operator_peer(cfg));
    Some(NetworkPolicy {
        metadata: meta(ld),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&ld.name_any())),
            policy_types: Some(vec!["Ingress".to_owned()]),
            // A rule with an empty `from` admits every source: with no peer at all, no rule (deny all ingress).
            ingress: Some(if from.is_empty() {
                Vec::new()
            } else {
                vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::String(
                            llama_contract::HTTP_PORT_NAME.to_owned(),
                        )),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    }]),
                }]
            }),
            ..Default::default()
        }),
    })
}
