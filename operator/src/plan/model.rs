//! The model source of a serving pod (`spec.model`: `url`, optionally into a shared cache, `pvc`, or a modelcar
//! `image`): where the server reads the GGUF file, and the volumes and init containers that put it there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, PersistentVolumeClaimVolumeSource, Probe, ResourceRequirements, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{
    FETCH_CONTAINER, MODEL_DIR, MODELCAR_DIR, PlanConfig, empty_dir, flag, mount,
    restricted_container_security, secret_volume,
};
use crate::crd::LlamaDeploymentSpec;

/// Path of the GGUF file as the server sees it.
pub fn model_path(spec: &LlamaDeploymentSpec) -> String {
    let m = &spec.model;
    if let Some(pvc) = &m.pvc {
        format!("{MODEL_DIR}/{}", pvc.path)
    } else if m.image.is_some() {
        format!(
            "{MODELCAR_DIR}/models/{}",
            m.file.as_deref().unwrap_or("model.gguf")
        )
    } else if m.cache.is_some() {
        let key = llama_contract::model_url::cache_key(
            m.url.as_deref().unwrap_or_default(),
            m.sha256.as_deref(),
        );
        format!("{MODEL_DIR}/{key}/model.gguf")
    } else {
        format!("{MODEL_DIR}/model.gguf")
    }
}

/// Size limit of the `url` model's volume: the declared file size + 10 % + 64 MiB; `None` when undeclared.
pub(super) fn model_volume_size(s: &LlamaDeploymentSpec) -> Option<Quantity> {
    let b = s.model.size_bytes?;
    Some(Quantity(format!(
        "{}Mi",
        (b + b / 10).div_euclid(1 << 20) + 64
    )))
}

/// Arguments of the `model-fetch` init container (`llama-server fetch ...`); `headers`: the
/// `headersSecretRef` Secret is mounted at [`llama_contract::MODEL_HEADERS_DIR`].
pub fn fetch_args(url: &str, sha256: Option<&str>, headers: bool, out: &str) -> Vec<String> {
    use llama_contract::fetch_flags as f;
    let mut args = vec![
        llama_contract::cmd::FETCH.to_owned(),
        flag(f::URL),
        url.to_owned(),
    ];
    if let Some(sha) = sha256 {
        args.extend([flag(f::SHA256), sha.to_owned()]);
    }
    if headers {
        args.extend([
            flag(f::HEADERS_DIR),
            llama_contract::MODEL_HEADERS_DIR.to_owned(),
        ]);
    }
    args.extend([flag(f::OUT), out.to_owned()]);
    args
}

/// Shell of the modelcar sidecar: publish a link to this process's root `/models` (reachable by the server
/// through the shared process namespace as `/proc/<pid>/root/models`) in the shared `/modelcar` volume, then
/// wait for SIGTERM. `$$` is the sidecar shell's own pid as the pod's other containers see it, so no pid search
/// is needed; the sidecar's startup probe holds the server back until the link resolves. The kubelet expands
/// `$(VAR)` in commands and turns `$$` into `$`, so the shell's `$$` is written `$$$$` here (found on a real node:
/// with `$$` the link pointed at `/proc/$/root/models`).
const MODELCAR_SCRIPT: &str = r#"ln -sfn "/proc/$$$$/root/models" /modelcar/models
trap 'exit 0' TERM INT
while true; do sleep 3600 & wait $!; done
"#;

/// The model source's volumes and mounts (added to the server's) and the init containers it needs (the `url`
/// fetcher, the modelcar sidecar), plus `shareProcessNamespace` for a modelcar.
pub(super) fn model_source(
    s: &LlamaDeploymentSpec,
    cfg: &PlanConfig,
    server_image: &str,
    pull_policy: &Option<String>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> (Vec<Container>, Option<bool>) {
    let mut init_containers = Vec::new();
    let mut share_process_namespace = None;
    let m = &s.model;
    if let Some(url) = &m.url {
        volumes.push(match &m.cache {
            Some(crate::crd::ModelCache {
                host_path: Some(path),
                ..
            }) => Volume {
                name: "model".to_owned(),
                host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                    path: path.clone(),
                    type_: Some("DirectoryOrCreate".to_owned()),
                }),
                ..Default::default()
            },
            Some(crate::crd::ModelCache {
                claim_name: Some(claim),
                ..
            }) => Volume {
                name: "model".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: None,
                }),
                ..Default::default()
            },
            _ => empty_dir("model", None, model_volume_size(s)),
        });
        mounts.push(mount("model", MODEL_DIR, true));
        let mut fetch_mounts = vec![
            mount("model", MODEL_DIR, false),
            mount("tmp", "/tmp", false),
        ];
        if let Some(secret) = &m.headers_secret_ref {
            volumes.push(secret_volume("model-headers", &secret.name));
            fetch_mounts.push(mount(
                "model-headers",
                llama_contract::MODEL_HEADERS_DIR,
                true,
            ));
        }
        init_containers.push(Container {
            name: FETCH_CONTAINER.to_owned(),
            image: Some(
                cfg.fetch_image
                    .clone()
                    .unwrap_or_else(|| server_image.to_owned()),
            ),
            image_pull_policy: pull_policy.clone(),
            command: Some(vec![llama_contract::cmd::BINARY.to_owned()]),
            args: Some(fetch_args(
                url,
                m.sha256.as_deref(),
                m.headers_secret_ref.is_some(),
                &model_path(s),
            )),
            // Proxies and `HF_ENDPOINT` apply to the download too; the API key does not.
            env: (!s.env.is_empty()).then(|| s.env.clone()),
            env_from: (!s.env_from.is_empty()).then(|| s.env_from.clone()),
            volume_mounts: Some(fetch_mounts),
            security_context: Some(restricted_container_security()),
            // A failed fetch's last log lines (status, URL, checksum) become the termination message.
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Default::default()
        });
    } else if let Some(pvc) = &m.pvc {
        volumes.push(Volume {
            name: "model".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount("model", MODEL_DIR, true));
    } else if let Some(image) = &m.image {
        share_process_namespace = Some(true);
        volumes.push(empty_dir(
            "modelcar",
            None,
            Some(Quantity("1Mi".to_owned())),
        ));
        mounts.push(mount("modelcar", MODELCAR_DIR, true));
        init_containers.push(Container {
            name: "modelcar".to_owned(),
            image: Some(image.trim_start_matches("oci://").to_owned()),
            // A native sidecar: started before, and stopped after, the server.
            restart_policy: Some("Always".to_owned()),
            command: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                MODELCAR_SCRIPT.to_owned(),
            ]),
            volume_mounts: Some(vec![mount("modelcar", MODELCAR_DIR, false)]),
            startup_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "test".into(),
                        "-e".into(),
                        format!("{MODELCAR_DIR}/models/"),
                    ]),
                }),
                period_seconds: Some(1),
                failure_threshold: Some(300),
                ..Default::default()
            }),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity("10m".to_owned())),
                    ("memory".to_owned(), Quantity("16Mi".to_owned())),
                ])),
                limits: Some(BTreeMap::from([(
                    "memory".to_owned(),
                    Quantity("64Mi".to_owned()),
                )])),
                ..Default::default()
            }),
            security_context: Some(restricted_container_security()),
            ..Default::default()
        });
    }
    (init_containers, share_process_namespace)
}
