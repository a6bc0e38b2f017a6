use super::*;

#[test]
fn chunked_sse_is_split_into_lines_across_chunk_boundaries() {
    let body = "7\r\ndata: a\r\n6\r\n\ndata:\r\n4\r\n b\n\n\r\n0\r\n\r\n";
    let mut lines = Vec::new();
    read_chunked(&mut body.as_bytes(), |l| {
        lines.push(l.to_string());
        Ok(true)
    })
    .unwrap();
    assert_eq!(lines, vec!["data: a", "data: b", ""]);
}

#[test]
fn percentiles_pick_from_the_sorted_samples() {
    let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
    assert_eq!(percentile(&mut v, 0.5), 3.0);
    assert_eq!(percentile(&mut v, 0.99), 5.0);
}

/// Feeds `events` (ms after the start, SSE line) through a [`StreamState`].
fn feed(events: &[(u64, &str)]) -> StreamState {
    let start = Instant::now();
    let mut st = StreamState::new(start);
    for (ms, line) in events {
        if !st.line(line, start + Duration::from_millis(*ms)).unwrap() {
            break;
        }
    }
    st
}

#[test]
fn our_stream_one_token_per_chunk_then_a_usage_chunk() {
    let s = feed(&[
        (50, r#"data: {"choices":[{"index":0,"text":"A","finish_reason":null}]}"#),
        (55, ""),
        (60, r#"data: {"choices":[{"index":0,"text":" b","finish_reason":null}]}"#),
        (80, r#"data: {"choices":[{"index":0,"text":"c","finish_reason":"length"}]}"#),
        (80, r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#),
        (81, "data: [DONE]"),
    ])
    .finish(3)
    .unwrap();
    assert_eq!((s.tokens, s.chunks), (3, 3));
    assert_eq!(s.ttft, Duration::from_millis(50));
    assert_eq!(
        s.itl,
        vec![Duration::from_millis(10), Duration::from_millis(20)]
    );
    assert_eq!(s.tpot, Some(Duration::from_millis(15)));
}

#[test]
fn llamacpp_stream_multi_token_chunks_and_usage_in_the_final_chunk() {
    // llama.cpp (0.3.36's vendored server): one chunk per token, several when a UTF-8 character spans tokens
    // (here "é" = 2 tokens), then a final chunk with empty text, finish_reason, usage and timings; every
    // "data:" line is followed by a blank line.
    let s = feed(&[
        (40, r#"data: {"choices":[{"text":"x","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}"#),
        (45, ""),
        (60, r#"data: {"choices":[{"text":"\u00e9","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}"#),
        (70, r#"data: {"choices":[{"text":"y","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}"#),
        (70, r#"data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"completion_tokens":4,"prompt_tokens":9,"total_tokens":13},"timings":{"predicted_n":4}}"#),
        (71, "data: [DONE]"),
    ])
    .finish(4)
    .unwrap();
    assert_eq!((s.tokens, s.chunks), (4, 3));
    assert_eq!(s.ttft, Duration::from_millis(40));
    assert_eq!(s.itl.len(), 2);
    assert_eq!(s.tpot, Some(Duration::from_millis(10)));
}

#[test]
fn without_usage_text_chunks_are_counted() {
    let s = feed(&[
        (1, r#"data: {"choices":[{"text":"a"}]}"#),
        (2, r#"data: {"choices":[{"text":"b"}]}"#),
        (3, "data: [DONE]"),
    ])
    .finish(2)
    .unwrap();
    assert_eq!(s.tokens, 2);
}

#[test]
fn fewer_tokens_than_requested_fail() {
    let st = feed(&[
        (
            1,
            r#"data: {"choices":[{"text":"a","finish_reason":"stop"}],"usage":{"completion_tokens":1}}"#,
        ),
        (2, "data: [DONE]"),
    ]);
    let e = st.finish(64).unwrap_err().to_string();
    assert!(
        e.contains("returned 1 output tokens") && e.contains("64 were requested"),
        "{e}"
    );
}

#[test]
fn a_stream_without_done_or_with_an_error_event_fails() {
    let st = feed(&[(
        1,
        r#"data: {"choices":[{"text":"a"}],"usage":{"completion_tokens":1}}"#,
    )]);
    assert!(st.finish(1).unwrap_err().to_string().contains("[DONE]"));
    let start = Instant::now();
    let mut st = StreamState::new(start);
    assert!(
        st.line(r#"data: {"error":{"message":"boom"}}"#, start)
            .is_err()
    );
    assert!(st.line("data: {not json", start).is_err());
}

#[test]
fn more_text_chunks_than_reported_tokens_fail() {
    let st = feed(&[
        (1, r#"data: {"choices":[{"text":"a"}]}"#),
        (
            2,
            r#"data: {"choices":[{"text":"b"}],"usage":{"completion_tokens":1}}"#,
        ),
        (3, "data: [DONE]"),
    ]);
    assert!(st.finish(1).is_err());
}

#[test]
fn mixed_workload_is_deterministic_and_spans_the_lengths() {
    assert_eq!(workload(7, 64, true), workload(7, 64, true));
    assert_eq!(workload(7, 64, false).1, 64);
    let draws: Vec<(String, usize)> = (0..400).map(|i| workload(i, 64, true)).collect();
    let words: Vec<usize> = draws
        .iter()
        .map(|(p, _)| p.split(' ').count() - 5)
        .collect();
    let outs: Vec<usize> = draws.iter().map(|&(_, o)| o).collect();
    assert!(words.iter().all(|&w| (24..=480).contains(&w)), "{words:?}");
    assert!(outs.iter().all(|&o| (16..=112).contains(&o)), "{outs:?}");
    let mean = outs.iter().sum::<usize>() as f64 / outs.len() as f64;
    assert!((54.0..74.0).contains(&mean), "mean output {mean}");
    assert!(words.iter().min() < Some(&60) && words.iter().max() > Some(&440));
}

#[test]
fn url_or_host_port() {
    assert_eq!(host_port("http://127.0.0.1:8080/"), "127.0.0.1:8080");
    assert_eq!(host_port("127.0.0.1:8000"), "127.0.0.1:8000");
}
