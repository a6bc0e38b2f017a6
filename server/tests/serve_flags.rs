//! Flags the operator passes to `serve` with values the server cannot run are refused with a message that
//! says why (the pod's termination message and the operator's Ready=False say the same), never a clap error.

use std::process::Command;

mod engine_common;

fn serve(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llama-server"))
        .arg("serve")
        .args(args)
        .env("CANDLE_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run llama-server serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tensor-parallel size the model cannot be split by exits before listening, with the arithmetic the
/// operator's validation prints too (`llama_contract::tensor_parallel`), never a clap error.
#[test]
fn a_tensor_parallel_size_that_does_not_divide_the_heads_exits_with_the_arithmetic() {
    let model = engine_common::smollm2();
    let flag = format!("--{}", llama_contract::serve_flags::TENSOR_PARALLEL_SIZE);
    let (ok, err) = serve(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        &flag,
        "2",
        "--port",
        "0",
    ]);
    assert!(!ok);
    let want = llama_contract::tensor_parallel::divides(2, "attention heads", 9)
        .expect_err("9 heads do not split in 2");
    assert!(
        err.contains(&format!("--tensor-parallel-size 2: {want}")),
        "{err}"
    );
    assert!(!err.contains("unexpected argument"), "{err}");
    let (ok, err) = serve(&["--model", "/nonexistent.gguf", &flag, "0"]);
    assert!(!ok);
    assert!(
        err.contains("--tensor-parallel-size must be at least 1"),
        "{err}"
    );
}

#[test]
fn log_format_json_is_accepted_and_bad_values_name_the_choices() {
    let (ok, err) = serve(&["--log-format", "yaml"]);
    assert!(!ok);
    assert!(err.contains("possible values: text, json"), "{err}");
    // json is accepted: the failure is about the model file, not the flag
    let (ok, err) = serve(&["--log-format", "json", "--model", "/nonexistent.gguf"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
}

/// `--device` (the contract's flag): CUDA from this CPU-only build exits before loading, naming the feature;
/// a bad value names the choices; `cpu` is accepted (the failure is then about the model file).
#[test]
fn device_cuda_on_a_cpu_build_names_the_feature_and_bad_values_the_choices() {
    let device = format!("--{}", llama_contract::serve_flags::DEVICE);
    let (ok, err) = serve(&[&device, "cuda:7", "--model", "/nonexistent.gguf"]);
    assert!(!ok);
    assert!(
        err.contains("--device cuda:7: this llama-server was built without CUDA support (the `cuda` Cargo feature)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let (ok, err) = serve(&[&device, "gpu"]);
    assert!(!ok);
    assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{err}");
    let (ok, err) = serve(&[&device, "cpu", "--model", "/nonexistent.gguf"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
}

/// A KV cache budget larger than the memory the weights leave is refused before anything is loaded or
/// served, with the arithmetic (weights + headroom + KV cache against the memory the server may use).
#[test]
fn a_kv_budget_that_does_not_fit_is_refused_with_the_arithmetic() {
    let model = engine_common::smollm2();
    let (ok, err) = serve(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--kv-cache-memory",
        "1000000000000000",
        "--port",
        "0",
    ]);
    assert!(!ok);
    assert!(
        err.contains(
            "the model and its KV cache do not fit in the memory this server may use: weights 92 MiB + \
             headroom 229 MiB + KV cache 931322.57 GiB = 931322.89 GiB does not fit in "
        ),
        "{err}"
    );
    assert!(err.contains("lower --kv-cache-memory"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("listening"),
        "{err}"
    );
}

/// A model whose weights are corrupt (NaN block scales over its last 64 KiB) loads without a parse error but
/// fails the self-check forward pass: the server exits before reporting ready, saying why.
#[test]
fn a_model_with_corrupt_weights_fails_the_self_check_before_ready() {
    let src = engine_common::smollm2();
    let copy = std::env::temp_dir().join(format!("llama-corrupt-{}.gguf", std::process::id()));
    let mut bytes = std::fs::read(&src).expect("read model");
    let n = bytes.len();
    bytes[n - 65536..].fill(0xff); // 0xffff is an f16 NaN: every scale and weight there is NaN
    std::fs::write(&copy, bytes).expect("write copy");
    let (ok, err) = serve(&[
        "--model",
        copy.to_str().expect("utf-8"),
        "--port",
        "0",
        "--max-seq-len",
        "64",
        "--kv-cache-memory",
        "10000000",
    ]);
    let _ = std::fs::remove_file(&copy);
    assert!(!ok);
    assert!(err.contains("self-check forward pass gave"), "{err}");
}
