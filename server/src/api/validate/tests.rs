use super::*;
use serde_json::json;

/// One token per byte (+1 so 0 stays free for BOS); the chat template is `role: content\n`.
pub(crate) struct ByteEncoder;

impl PromptEncoder for ByteEncoder {
    fn encode(&self, text: &str, _special: bool) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(|b| b as u32 + 1).collect())
    }
    fn render_chat(
        &self,
        turns: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut s: String = turns
            .iter()
            .map(|t| format!("{}: {}\n", t.role, t.content))
            .collect();
        if add_generation_prompt {
            s.push_str("assistant: ");
        }
        Ok(s)
    }
    fn vocab_size(&self) -> usize {
        300
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        vec![0]
    }
}

fn limits() -> Limits {
    Limits {
        served_model_name: "smol".into(),
        max_seq_len: 64,
    }
}

fn completion(v: serde_json::Value) -> Result<ValidRequest, ApiError> {
    let req: CompletionRequest = serde_json::from_value(v).expect("parses");
    validate_completion(&req, &ByteEncoder, &limits())
}

fn chat(v: serde_json::Value) -> Result<ValidRequest, ApiError> {
    let req: ChatCompletionRequest = serde_json::from_value(v).expect("parses");
    validate_chat(&req, &ByteEncoder, &limits())
}

fn param_of(r: Result<ValidRequest, ApiError>) -> String {
    match r {
        Err(ApiError::InvalidField { param, .. }) => param,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_plain_completion_resolves_defaults() {
    let v = completion(json!({"model": "smol", "prompt": "hi"})).unwrap();
    assert_eq!(v.prompt_tokens, vec![105, 106]);
    assert_eq!(v.max_tokens, 62, "defaults to the room left in the context");
    assert_eq!(v.n, 1);
    assert_eq!(v.sampling.temperature, 1.0);
    assert_eq!(v.stop_token_ids, vec![0]);
    assert!(!v.stream);
    assert_eq!(v.logprobs, None);
}

#[test]
fn prompts_may_be_token_ids_or_one_element_arrays() {
    assert_eq!(
        completion(json!({"prompt": [5, 6]})).unwrap().prompt_tokens,
        vec![5, 6]
    );
    assert_eq!(
        completion(json!({"prompt": [[5, 6]]}))
            .unwrap()
            .prompt_tokens,
        vec![5, 6]
    );
    assert_eq!(
        completion(json!({"prompt": ["a"]})).unwrap().prompt_tokens,
        vec![98]
    );
    assert_eq!(
        param_of(completion(json!({"prompt": ["a", "b"]}))),
        "prompt"
    );
    assert_eq!(param_of(completion(json!({"prompt": [5, 300]}))), "prompt");
    assert_eq!(param_of(completion(json!({"prompt": [-1]}))), "prompt");
}

#[test]
fn each_bad_field_is_named_in_the_error() {
    let cases = [
        (json!({"prompt": "x", "temperature": 2.5}), "temperature"),
        (json!({"prompt": "x", "temperature": -0.1}), "temperature"),
        (json!({"prompt": "x", "top_p": 0}), "top_p"),
        (json!({"prompt": "x", "top_p": 1.5}), "top_p"),
        (json!({"prompt": "x", "top_k": -5}), "top_k"),
        (json!({"prompt": "x", "min_p": 2}), "min_p"),
        (
            json!({"prompt": "x", "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"prompt": "x", "frequency_penalty": -3}),
            "frequency_penalty",
        ),
        (
            json!({"prompt": "x", "repetition_penalty": 0}),
            "repetition_penalty",
        ),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 64}), "max_tokens"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "n": 17}), "n"),
        (json!({"prompt": "x", "seed": -1}), "seed"),
        (json!({"prompt": "x", "stop": 5}), "stop"),
        (json!({"prompt": "x", "stop": [""]}), "stop"),
        (json!({"prompt": "x", "logprobs": 21}), "logprobs"),
        (
            json!({"prompt": "x", "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"prompt": "x", "stop_token_ids": [999]}),
            "stop_token_ids",
        ),
        (json!({"prompt": "x", "echo": true}), "echo"),
        (json!({"prompt": ""}), "prompt"),
        (json!({}), "prompt"),
        (json!({"prompt": {"a": 1}}), "prompt"),
    ];
    for (body, field) in cases {
        assert_eq!(param_of(completion(body.clone())), field, "{body}");
    }
}

#[test]
fn a_prompt_at_max_seq_len_is_rejected_with_the_bound_in_the_message() {
    let long = "x".repeat(64);
    match completion(json!({"prompt": long})) {
        Err(ApiError::InvalidField { param, message }) => {
            assert_eq!(param, "prompt");
            assert!(message.contains("64"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        completion(json!({"prompt": "x".repeat(60), "max_tokens": 4}))
            .unwrap()
            .max_tokens,
        4
    );
    assert_eq!(
        param_of(completion(
            json!({"prompt": "x".repeat(60), "max_tokens": 5})
        )),
        "max_tokens"
    );
}

#[test]
fn another_model_name_is_model_not_found() {
    assert_eq!(
        completion(json!({"model": "gpt-4", "prompt": "x"})),
        Err(ApiError::ModelNotFound("gpt-4".into()))
    );
}

#[test]
fn chat_messages_go_through_the_template() {
    let v =
        chat(json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}))
            .unwrap();
    let text: String = v
        .prompt_tokens
        .iter()
        .map(|&t| (t - 1) as u8 as char)
        .collect();
    assert_eq!(text, "user: hi\nassistant: ");
    assert_eq!(v.max_tokens, 3);
    assert_eq!(v.endpoint, Endpoint::Chat);
}

#[test]
fn chat_content_parts_are_concatenated() {
    let parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
    let v = chat(json!({"messages": [{"role": "user", "content": parts}]})).unwrap();
    assert_eq!(v.prompt_tokens.len(), "user: ab\nassistant: ".len());
}

#[test]
fn bad_chat_requests_name_the_field() {
    let cases = [
        (json!({}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 99}),
            "top_logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x".repeat(80)}]}),
            "messages",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(param_of(chat(body.clone())), field, "{body}");
    }
}

#[test]
fn sampling_logprobs_and_stream_options_resolve() {
    let v = chat(json!({
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0, "top_k": 5, "seed": 7, "n": 2, "stop": ["a", "b"], "ignore_eos": true,
        "logprobs": true, "top_logprobs": 3, "stream": true, "stream_options": {"include_usage": true}
    }))
    .unwrap();
    assert_eq!(v.sampling.temperature, 0.0);
    assert_eq!(v.sampling.top_k, 5);
    assert_eq!(v.sampling.seed, Some(7));
    assert_eq!(v.n, 2);
    assert_eq!(v.stop, vec!["a", "b"]);
    assert!(v.stop_token_ids.is_empty(), "ignore_eos drops EOS");
    assert_eq!(v.logprobs, Some(3));
    assert!(v.stream && v.include_usage);
}
