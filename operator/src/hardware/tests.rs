use super::*;
use crate::crd::{LlamaDeploymentSpec, Quantization};

fn spec(json: serde_json::Value) -> LlamaDeploymentSpec {
    serde_json::from_value(json).expect("valid spec")
}

fn gpu_node(name: &str, gpus: i64, mem_mib: Option<u64>) -> NodeFacts {
    let mut labels = BTreeMap::from([("nvidia.com/gpu.present".to_owned(), "true".to_owned())]);
    if let Some(m) = mem_mib {
        labels.insert(GPU_MEMORY_LABEL.to_owned(), m.to_string());
    }
    NodeFacts {
        name: name.to_owned(),
        labels,
        allocatable: BTreeMap::from([("nvidia.com/gpu".to_owned(), gpus), ("cpu".to_owned(), 32)]),
        unschedulable: false,
    }
}

fn cpu_node() -> NodeFacts {
    NodeFacts {
        name: "cpu-node-0".to_owned(),
        labels: BTreeMap::new(),
        allocatable: BTreeMap::from([("cpu".to_owned(), 16)]),
        unschedulable: false,
    }
}

fn cluster() -> Vec<NodeFacts> {
    vec![gpu_node("gpu-node-0", 8, Some(81559)), cpu_node()]
}

fn smollm(tp: i32) -> LlamaDeploymentSpec {
    spec(serde_json::json!({
        "model": {"url": "https://example.com/smollm2.gguf", "heads": 9, "kvHeads": 3, "layers": 30,
                  "hiddenSize": 576, "sizeBytes": 145_000_000},
        "tensorParallelSize": tp
    }))
}

#[test]
fn tensor_parallel_size_two_is_refused_for_nine_heads_with_the_arithmetic() {
    let err = validate(&smollm(2), &cluster()).expect_err("9 heads cannot split in 2");
    assert_eq!(err.reason(), "TensorParallelMismatch");
    assert!(
        err.to_string()
            .contains("tensor-parallel size 2 does not divide model.heads 9 (9 % 2 = 1)"),
        "{err}"
    );
}

#[test]
fn tensor_parallel_size_must_also_divide_kv_heads() {
    let err = validate(&smollm(9), &[gpu_node("big", 16, None)])
        .expect_err("3 kv heads cannot split in 9");
    assert!(
        err.to_string()
            .contains("does not divide model.kvHeads 3 (3 % 9 = 3)"),
        "{err}"
    );
}

#[test]
fn sixteen_gpus_per_pod_do_not_fit_a_node_with_eight() {
    let mut s = smollm(1);
    s.model.heads = Some(32);
    s.model.kv_heads = Some(16);
    s.model.hidden_size = Some(4096);
    s.tensor_parallel_size = 16;
    let err = validate(&s, &cluster()).expect_err("no node has 16 GPUs");
    assert_eq!(err.reason(), "InsufficientGPUs");
    assert_eq!(
        err.to_string(),
        "tensorParallelSize 16 needs 16 nvidia.com/gpu per pod, but the largest node offers 8 \
         (gpu-node-0: 8 < 16)"
    );
}

#[test]
fn a_cluster_without_gpus_says_so() {
    let err = validate(&smollm(1), &[cpu_node()]).expect_err("no GPUs");
    assert!(
        err.to_string()
            .contains("no schedulable node offers nvidia.com/gpu (1 nodes considered)"),
        "{err}"
    );
}

#[test]
fn node_selector_limits_the_nodes_considered() {
    let mut s = smollm(1);
    s.node_selector.insert("pool".to_owned(), "a100".to_owned());
    let err = validate(&s, &cluster()).expect_err("no node in that pool");
    assert!(
        err.to_string()
            .contains("no schedulable node matching nodeSelector offers"),
        "{err}"
    );
}

#[test]
fn a_small_model_fits_and_the_message_shows_the_arithmetic() {
    let fit = validate(&smollm(1), &cluster()).expect("fits");
    assert!(
        fit.message.contains("fits gpu-node-0 (79.6 GiB per GPU)"),
        "{}",
        fit.message
    );
    assert!(
        fit.message.contains("model.heads 9 divisible by 1"),
        "{}",
        fit.message
    );
}

#[test]
fn a_seventy_billion_model_in_f16_does_not_fit_one_h100() {
    let s = spec(serde_json::json!({
        "model": {"pvc": {"claimName": "m", "path": "l70b.gguf"}, "parameters": 70_000_000_000_i64,
                  "heads": 64, "kvHeads": 8, "layers": 80, "hiddenSize": 8192},
        "quantization": "F16", "maxBatchSize": 8, "maxSeqLen": 4096
    }));
    let err = validate(&s, &cluster()).expect_err("140 GB of weights on one 80 GB GPU");
    assert_eq!(err.reason(), "InsufficientGPUMemory");
    assert!(
        err.to_string().starts_with("weights 130.4 GiB / TP 1 + KV cache 10.0 GiB / TP 1 = 140.4 GiB per GPU exceeds the largest GPU memory 79.6 GiB (gpu-node-0)"),
        "{err}"
    );
}

/// A 70B F16 model split over four GPUs (35 GiB per GPU).
fn l70b_f16_tp4() -> LlamaDeploymentSpec {
    spec(serde_json::json!({
        "model": {"pvc": {"claimName": "m", "path": "l70b.gguf"}, "parameters": 70_000_000_000_i64,
                  "heads": 64, "kvHeads": 8, "layers": 80, "hiddenSize": 8192},
        "quantization": "F16", "maxBatchSize": 8, "maxSeqLen": 4096, "tensorParallelSize": 4
    }))
}

#[test]
fn the_same_model_split_over_four_gpus_fits() {
    let s = l70b_f16_tp4();
    let fit = fit(&s, &cluster()).expect("35 GiB per GPU fits");
    assert!(
        fit.message.contains("= 35.1 GiB per GPU fits gpu-node-0"),
        "{}",
        fit.message
    );
}

#[test]
fn tensor_parallel_fits_now_that_the_server_runs_it() {
    let fit = validate(&l70b_f16_tp4(), &cluster()).expect("TP 4 of 64 heads on 8-GPU nodes fits");
    assert!(
        fit.message.contains("model.heads 64 divisible by 4"),
        "{}",
        fit.message
    );
}

#[test]
fn a_tensor_parallel_size_that_cuts_quantization_blocks_is_refused_with_the_servers_arithmetic() {
    let mut s = smollm(3);
    s.quantization = Quantization::Q4K;
    let err =
        validate(&s, &[gpu_node("big", 8, None)]).expect_err("576 / 3 = 192 cuts a 256 block");
    assert_eq!(err.reason(), "TensorParallelMismatch");
    let want =
        llama_contract::tensor_parallel::whole_blocks(3, "model.hiddenSize (Q4_K)", 576, 256)
            .expect_err("the contract refuses it too");
    assert!(err.to_string().contains(&want), "{err}");
    s.quantization = Quantization::Q4_1;
    validate(&s, &[gpu_node("big", 8, None)]).expect("576 / 3 = 192 is six Q4_1 blocks");
}

#[test]
fn declared_kv_cache_memory_replaces_the_estimate() {
    let mut s = smollm(1);
    s.kv_cache_memory = Some("100Gi".to_owned());
    let err = validate(&s, &cluster()).expect_err("100 GiB of KV on an 80 GiB GPU");
    assert_eq!(err.reason(), "InsufficientGPUMemory");
}

#[test]
fn unknown_gpu_memory_is_not_a_failure() {
    let fit = validate(&smollm(1), &[gpu_node("g", 1, None)]).expect("fits");
    assert!(
        fit.message.contains("GPU memory unknown"),
        "{}",
        fit.message
    );
}

#[test]
fn cpu_deployments_skip_gpu_checks() {
    let mut s = smollm(1);
    s.accelerator = Accelerator::Cpu;
    assert!(validate(&s, &[cpu_node()]).is_ok());
}

/// SmolLM2-135M Q4_1 on a CPU pod: the numbers of the real file (98,362,432 bytes, 576 wide, 30 layers of
/// 3 KV heads of 64).
fn cpu_smollm(memory: &str, max_seq_len: i32) -> LlamaDeploymentSpec {
    spec(serde_json::json!({
        "model": {"url": "https://example.com/smollm2.gguf", "heads": 9, "kvHeads": 3, "layers": 30,
                  "hiddenSize": 576, "sizeBytes": 98_362_432},
        "accelerator": "CPU",
        "resources": {"memory": memory},
        "maxBatchSize": 16,
        "maxBatchedTokens": 512,
        "maxSeqLen": max_seq_len,
    }))
}

#[test]
fn a_cpu_pod_whose_memory_cannot_hold_weights_headroom_and_one_sequence_is_refused_with_the_arithmetic()
 {
    // Headroom 128 MiB + 40 MiB (grammar tables) + 512 × 576 × 160 + 16 × 256 KiB = 217 MiB; one 8192-token
    // sequence of 23,040 bytes per token = 180 MiB; weights 94 MiB. 491 MiB in all.
    let err = validate(&cpu_smollm("400Mi", 8192), &[]).expect_err("too small");
    assert_eq!(err.reason(), "InsufficientMemory");
    assert_eq!(
        err.to_string(),
        "spec.resources.memory: weights 94 MiB + headroom 217 MiB + KV cache for one full-length sequence \
         180 MiB = 491 MiB does not fit in 400 MiB (resources.memory 400Mi), with spec.maxSeqLen 8192; \
         raise resources.memory or lower maxSeqLen, maxBatchSize or maxBatchedTokens"
    );
    // The same pod with sequences of 2048 tokens fits, and says what it checked.
    let ok = validate(&cpu_smollm("400Mi", 2048), &[]).expect("fits");
    assert!(
        ok.message
            .contains("resources.memory 400Mi: weights 94 MiB + headroom 217 MiB + KV cache"),
        "{}",
        ok.message
    );
    // An explicit kvCacheMemory is checked as given.
    let mut s = cpu_smollm("1Gi", 2048);
    s.kv_cache_memory = Some("900Mi".to_owned());
    let err = validate(&s, &[]).expect_err("kv too big");
    assert!(
        err.to_string().contains(
            "weights 94 MiB + headroom 217 MiB + KV cache 900 MiB = 1211 MiB does not fit in 1024 MiB \
             (resources.memory 1Gi), with spec.kvCacheMemory; raise resources.memory or lower kvCacheMemory"
        ),
        "{err}"
    );
}

#[test]
fn a_rolling_update_that_can_neither_surge_nor_drop_a_pod_is_refused() {
    let mut s = cpu_smollm("1Gi", 2048);
    s.rollout_strategy = Some(
        serde_json::from_value(serde_json::json!({"maxSurge": 0, "maxUnavailable": "0%"}))
            .expect("strategy"),
    );
    let err = validate(&s, &[]).expect_err("stuck");
    assert_eq!(err.reason(), "InvalidSpec");
    assert!(
        err.to_string()
            .starts_with("spec.rolloutStrategy: maxSurge and maxUnavailable are both 0"),
        "{err}"
    );
    // CPU's default unavailable is 0: a surge of 0 alone is stuck too.
    s.rollout_strategy =
        Some(serde_json::from_value(serde_json::json!({"maxSurge": 0})).expect("strategy"));
    assert!(validate(&s, &[]).is_err());
    s.rollout_strategy = Some(
        serde_json::from_value(serde_json::json!({"maxSurge": 0, "maxUnavailable": 1}))
            .expect("strategy"),
    );
    assert!(validate(&s, &[]).is_ok());
    s.rollout_strategy =
        Some(serde_json::from_value(serde_json::json!({"type": "Recreate"})).expect("strategy"));
    assert!(validate(&s, &[]).is_ok());
}

#[test]
fn cpu_memory_is_not_checked_without_a_limit_or_declared_sizes() {
    let mut s = cpu_smollm("1Gi", 2048);
    s.resources.memory = None;
    assert!(
        validate(&s, &[])
            .expect("ok")
            .message
            .contains("memory not checked")
    );
    let mut s = cpu_smollm("64Mi", 2048);
    s.model.size_bytes = None;
    let fit = validate(&s, &[]).expect("not checked, not refused");
    assert!(
        fit.message.contains("not declared, memory not checked"),
        "{}",
        fit.message
    );
    let mut s = cpu_smollm("64Mi", 2048);
    s.resources.memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        "lots".into(),
    ));
    assert_eq!(validate(&s, &[]).expect_err("bad").reason(), "InvalidSpec");
}

#[test]
fn weights_are_estimated_from_parameters_and_quantization() {
    let mut s = smollm(1);
    s.model.size_bytes = None;
    s.model.parameters = Some(1_000_000_000);
    s.quantization = Quantization::Q4_0;
    assert_eq!(estimate_memory(&s).weights_bytes, Some(562_500_000));
}

#[test]
fn unschedulable_nodes_are_ignored() {
    let mut n = gpu_node("cordoned", 8, None);
    n.unschedulable = true;
    assert_eq!(
        validate(&smollm(1), &[n]).expect_err("cordoned").reason(),
        "InsufficientGPUs"
    );
}
