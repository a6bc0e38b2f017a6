//! `spec.podTemplate`: a strategic-merge overlay on the planned pod template, applied last, for whatever the
//! spec has no field for (sidecars, extra volumes, host aliases, security settings…). It may not change what the
//! operator owns: the server container's command, arguments, image, ports, probes and lifecycle, the model's
//! containers and volumes, or the operator's labels. A refusal names the path.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The key list items merge by, for the pod-spec lists that have one (as `kubectl patch --type strategic`).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        _ => None,
    }
}

/// Merges `patch` into `base`: objects key by key (`null` deletes), lists with a merge key item by item (an
/// item with `"$patch": "delete"` removes its match), other lists and scalars replaced.
pub fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match (v, merge_key(k)) {
                    (Value::Null, _) => {
                        b.remove(k);
                    }
                    (Value::Array(items), Some(key)) => {
                        let list = b
                            .entry(k.clone())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if !list.is_array() {
                            *list = Value::Array(Vec::new());
                        }
                        if let Value::Array(existing) = list {
                            for item in items {
                                let id = item.get(key);
                                let at = existing
                                    .iter()
                                    .position(|e| id.is_some() && e.get(key) == id);
                                let delete =
                                    item.get("$patch").and_then(Value::as_str) == Some("delete");
                                match (at, delete) {
                                    (Some(i), true) => {
                                        existing.remove(i);
                                    }
                                    (None, true) => {}
                                    (Some(i), false) => strategic_merge(&mut existing[i], item),
                                    (None, false) => existing.push(item.clone()),
                                }
                            }
                        }
                    }
                    (v, _) => match b.get_mut(k) {
                        Some(existing) if existing.is_object() && v.is_object() => {
                            strategic_merge(existing, v)
                        }
                        _ => {
                            b.insert(k.clone(), v.clone());
                        }
                    },
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The item of `list` (a JSON array at `pointer` in `v`) whose `name` is `name`.
fn named<'a>(v: &'a Value, pointer: &str, name: &str) -> Option<&'a Value> {
    v.pointer(pointer)?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// Applies `overlay` (`{metadata: {labels, annotations}, spec: {…}}`) to `template` and checks that nothing the
/// operator owns changed. `owned_volumes`: the names of the volumes the plan created.
pub fn apply(
    template: &PodTemplateSpec,
    overlay: &Value,
    owned_volumes: &[String],
    owned_labels: &[String],
) -> Result<PodTemplateSpec, String> {
    if !overlay.is_object() {
        return Err("spec.podTemplate must be an object".to_owned());
    }
    if let Some(extra) = overlay
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "metadata" && *k != "spec"))
    {
        return Err(format!(
            "spec.podTemplate.{extra}: only metadata and spec may be set"
        ));
    }
    let planned = serde_json::to_value(template).map_err(|e| e.to_string())?;
    let mut merged = planned.clone();
    strategic_merge(&mut merged, overlay);

    let owned = |what: String, a: Option<&Value>, b: Option<&Value>| -> Result<(), String> {
        if a == b {
            Ok(())
        } else {
            Err(format!(
                "spec.podTemplate changes {what}, which the operator owns"
            ))
        }
    };
    let server = |v: &Value| named(v, "/spec/containers", "server").cloned();
    let (ps, ms) = (server(&planned), server(&merged));
    if ms.is_none() {
        return Err("spec.podTemplate removes the server container".to_owned());
    }
    for field in [
        "command",
        "args",
        "image",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "lifecycle",
    ] {
        owned(
            format!(
                "the server container's {field} (use the spec's own fields, e.g. serverArgs, image)"
            ),
            ps.as_ref().and_then(|c| c.get(field)),
            ms.as_ref().and_then(|c| c.get(field)),
        )?;
    }
    let mounts = |c: &Option<Value>, vol: &str| {
        c.as_ref()
            .and_then(|c| c.get("volumeMounts"))
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .find(|m| m.get("name").and_then(Value::as_str) == Some(vol))
                    .cloned()
            })
    };
    for vol in owned_volumes {
        owned(
            format!("volume {vol}"),
            named(&planned, "/spec/volumes", vol),
            named(&merged, "/spec/volumes", vol),
        )?;
        owned(
            format!("the server container's mount of volume {vol}"),
            mounts(&ps, vol).as_ref(),
            mounts(&ms, vol).as_ref(),
        )?;
    }
    let planned_inits = planned
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for init in &planned_inits {
        let name = init.get("name").and_then(Value::as_str).unwrap_or_default();
        owned(
            format!("init container {name}"),
            Some(init),
            named(&merged, "/spec/initContainers", name),
        )?;
    }
    for label in owned_labels {
        let pointer = format!(
            "/metadata/labels/{}",
            label.replace('~', "~0").replace('/', "~1")
        );
        owned(
            format!("label {label}"),
            planned.pointer(&pointer),
            merged.pointer(&pointer),
        )?;
    }
    owned(
        "shareProcessNamespace".to_owned(),
        planned.pointer("/spec/shareProcessNamespace"),
        merged.pointer("/spec/shareProcessNamespace"),
    )?;
    serde_json::from_value(merged).map_err(|e| format!("spec.podTemplate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::strategic_merge;
    use serde_json::json;

    #[test]
    fn lists_with_a_merge_key_merge_by_it_others_are_replaced_and_null_deletes() {
        let mut base = json!({
            "containers": [{"name": "server", "env": [{"name": "A", "value": "1"}], "image": "x"}],
            "tolerations": [{"key": "a"}],
            "nodeSelector": {"zone": "a", "disk": "ssd"},
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "old", "emptyDir": {}}],
        });
        strategic_merge(
            &mut base,
            &json!({
                "containers": [
                    {"name": "server", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "3"}]},
                    {"name": "sidecar", "image": "proxy"}
                ],
                "tolerations": [{"key": "b"}],
                "nodeSelector": {"disk": null, "gpu": "h100"},
                "volumes": [{"name": "old", "$patch": "delete"}, {"name": "cache", "hostPath": {"path": "/c"}}],
            }),
        );
        assert_eq!(
            base,
            json!({
                "containers": [
                    {"name": "server", "env": [{"name": "A", "value": "3"}, {"name": "B", "value": "2"}], "image": "x"},
                    {"name": "sidecar", "image": "proxy"}
                ],
                "tolerations": [{"key": "b"}],
                "nodeSelector": {"zone": "a", "gpu": "h100"},
                "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "hostPath": {"path": "/c"}}],
            })
        );
    }
}
