//! The official `openai` Python client against `llama-server serve` on SmolLM2: chat, completion, streaming,
//! n=2, stop strings, usage, logprobs; greedy output equals the engine's own `generate`. Then a table of bad
//! inputs, each with the right 4xx, and the server still serving.

mod serve_common;

use serve_common::{NAME, Server, generate, http_get, http_get_with};

#[test]
fn openai_client_gets_the_engines_greedy_answers_and_bad_inputs_get_the_right_4xx() {
    let completion = generate("The capital of France is", 16, false);
    let chat = generate("What is the capital of France?", 24, true);
    let server = Server::start(&[]);
    server.py("openai_client.py", &[NAME, &completion, &chat]);
    server.py("bad_inputs.py", &[NAME, "512"]);
    let (code, metrics) = http_get(server.port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for name in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("llama_request_errors_total{code=\"invalid_value\""),
        "errors are counted"
    );
    // Every server metric the chart's Grafana dashboard queries is in this live /metrics (after the client's
    // requests and errors above, so labelled series exist), histograms with their `_bucket` series.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(llama_contract::metrics::DASHBOARD),
    )
    .expect("the chart's dashboard");
    let wanted: Vec<String> = llama_contract::metrics::names_in(&dashboard)
        .into_iter()
        .filter(|n| !n.starts_with("llama_operator_"))
        .collect();
    assert!(wanted.len() >= 10, "the dashboard queries only {wanted:?}");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| {
            !metrics
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the server does not export: {missing:?}"
    );

    // openai_client.py sent `x-request-id: trace-abc-123`: the access line and the finished-request line name it.
    let log = server.log_text();
    for line in ["http", "request finished"] {
        assert!(
            log.lines()
                .any(|l| l.contains(line) && l.contains("trace-abc-123")),
            "no {line:?} log line names the client's x-request-id:\n{}",
            server.log_tail()
        );
    }
}

#[test]
fn api_key_guards_v1_but_not_health_ready_or_metrics() {
    let server = Server::start(&["--api-key", "sekret"]);
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(http_get(server.port, path).expect("get").0, 200, "{path}");
    }
    assert_eq!(http_get(server.port, "/v1/models").expect("get").0, 401);
    let (code, body) =
        http_get_with(server.port, "/v1/models", "Authorization: Bearer sekret").expect("get");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        http_get_with(server.port, "/v1/models", "Authorization: Bearer wrong")
            .expect("get")
            .0,
        401
    );
}

/// Lays out `dir` as the kubelet writes a mounted Secret: the keys in a timestamped directory, `..data` pointing
/// at it (swapped atomically by a rename), and each key a symlink through `..data`.
fn write_secret(dir: &std::path::Path, generation: u32, keys: &[(&str, &str)]) {
    let data = format!("..2026_12_06_{generation:02}");
    std::fs::create_dir_all(dir.join(&data)).expect("secret data dir");
    for (name, value) in keys {
        std::fs::write(dir.join(&data).join(name), value).expect("key");
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).expect("key link");
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}

#[test]
fn api_keys_from_a_mounted_secret_rotate_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("llama-api-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    write_secret(
        &dir,
        1,
        &[("primary", "key-one\n"), ("secondary", "key-two")],
    );
    let server = Server::start(&["--api-key-file", dir.to_str().expect("utf-8")]);
    let status = |key: &str| {
        http_get_with(
            server.port,
            "/v1/models",
            &format!("Authorization: Bearer {key}"),
        )
        .expect("get")
        .0
    };
    assert_eq!(
        (status("key-one"), status("key-two"), status("key-three")),
        (200, 200, 401)
    );

    // Rotate: primary becomes key-three, key-one is revoked; secondary stays valid throughout.
    write_secret(
        &dir,
        2,
        &[("primary", "key-three"), ("secondary", "key-two")],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(
            status("key-two"),
            200,
            "the unchanged key stopped working mid-rotation"
        );
        if status("key-three") == 200 && status("key-one") == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated keys were not picked up in 10 s:\n{}",
            server.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(server.log_text().contains("API keys reloaded"));
    assert!(
        !server.log_text().contains("key-three") && !server.log_text().contains("key-one"),
        "a key reached the log"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
