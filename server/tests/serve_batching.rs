//! Batch invariance: 16 concurrent greedy requests with different prompts and lengths give exactly the tokens
//! each gives alone — with a roomy KV cache, and with a tiny one that forces preemption (recompute).

mod serve_common;

use serve_common::Server;

#[test]
fn concurrent_greedy_requests_equal_each_request_alone_even_under_preemption() {
    batch_invariance(&[]);
}

/// The same at tensor-parallel size 3 (SmolLM2's 9 heads / 3 KV heads: one KV head per rank): every rank
/// runs every step on its own cache through the one block table, preemption included.
#[test]
fn at_tensor_parallel_size_3_concurrent_requests_equal_each_alone_even_under_preemption() {
    batch_invariance(&["--tensor-parallel-size", "3"]);
}

fn batch_invariance(extra: &[&str]) {
    let alone_file = std::env::temp_dir().join(format!(
        "llama-batch-alone-{}-{}.json",
        std::process::id(),
        extra.len()
    ));
    {
        let server = Server::start(extra);
        let alone = server.py("batch_invariance.py", &["alone"]);
        std::fs::write(&alone_file, alone).expect("write");
        let out = server.py(
            "batch_invariance.py",
            &["concurrent", alone_file.to_str().expect("utf8")],
        );
        assert!(out.contains("preemptions"));
    }
    // 24 blocks of 16 tokens = 384 token slots for 16 sequences of ~20-60 tokens each: preemption is forced.
    let mut args = vec!["--kv-cache-memory", "8847360", "--max-seq-len", "256"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let out = server.py(
        "batch_invariance.py",
        &["concurrent", alone_file.to_str().expect("utf8")],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(
        v["preemptions"].as_f64().unwrap_or(0.0) > 0.0,
        "the tiny cache should force preemption: {out}"
    );
    let _ = std::fs::remove_file(alone_file);
}
