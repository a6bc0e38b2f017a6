//! The request path from raw body bytes to a checked request: JSON parsing, validation, chat templating and
//! tokenization with the real tokenizer (the first byte picks the endpoint). A refusal must be a 4xx with a
//! message; an accepted request must satisfy every bound the engine relies on.
#![no_main]

#[path = "common.rs"]
mod common;

use actix_web::ResponseError;
use libfuzzer_sys::fuzz_target;
use llama_server::api::handlers::{Encoder, parse};
use llama_server::api::types::{ChatCompletionRequest, CompletionRequest};
use llama_server::api::validate::{
    Limits, MAX_LOGIT_BIAS, MAX_N, MAX_STOP, MAX_STOP_BYTES, PromptEncoder, ValidRequest,
    validate_chat, validate_completion,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let m = common::model();
    let enc = Encoder {
        tokenizer: &m.tokenizer,
        chat_template: &m.chat_template,
        chat_special_tokens: which & 2 != 0,
        guidance: Some(&m.guidance),
    };
    let limits = Limits {
        served_model_name: "smol".into(),
        max_seq_len: 256,
        default_max_tokens: 64,
    };
    let body = actix_web::web::Bytes::copy_from_slice(body);
    let result = if which & 1 == 0 {
        parse::<CompletionRequest>(&body).and_then(|r| validate_completion(&r, &enc, &limits))
    } else {
        parse::<ChatCompletionRequest>(&body).and_then(|r| validate_chat(&r, &enc, &limits))
    };
    match result {
        Err(e) => {
            let status = e.status_code();
            assert!(status.is_client_error(), "bad input answered {status}: {e}");
            assert!(
                !e.to_string().trim().is_empty(),
                "an error without a message"
            );
        }
        Ok(v) => check(&v, &enc, &limits),
    }
});

fn check(v: &ValidRequest, enc: &Encoder<'_>, limits: &Limits) {
    let vocab = enc.vocab_size();
    assert!(!v.prompt_tokens.is_empty(), "empty prompt accepted");
    assert!(
        v.prompt_tokens.iter().all(|&t| (t as usize) < vocab),
        "prompt token outside the vocabulary"
    );
    assert!(v.max_tokens >= 1, "max_tokens 0 accepted");
    assert!(
        v.prompt_tokens.len() + v.max_tokens <= limits.max_seq_len,
        "{} prompt + {} output tokens exceed the context {}",
        v.prompt_tokens.len(),
        v.max_tokens,
        limits.max_seq_len
    );
    assert!((1..=MAX_N).contains(&v.n), "n = {}", v.n);
    let s = &v.sampling;
    assert!(
        s.temperature.is_finite() && (0.0..=2.0).contains(&s.temperature),
        "{s:?}"
    );
    assert!(
        s.top_p.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0,
        "{s:?}"
    );
    assert!(
        s.min_p.is_finite() && (0.0..=1.0).contains(&s.min_p),
        "{s:?}"
    );
    for p in [s.presence_penalty, s.frequency_penalty] {
        assert!(p.is_finite() && (-2.0..=2.0).contains(&p), "{s:?}");
    }
    assert!(
        s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0,
        "{s:?}"
    );
    assert!(s.logit_bias.len() <= MAX_LOGIT_BIAS);
    assert!(
        s.logit_bias.windows(2).all(|w| w[0].0 < w[1].0),
        "logit_bias ids not unique and sorted: {:?}",
        s.logit_bias
    );
    for &(id, b) in &s.logit_bias {
        assert!(
            (id as usize) < vocab && b.is_finite() && b.abs() <= 100.0,
            "logit_bias {id}: {b}"
        );
    }
    assert!(v.stop.len() <= MAX_STOP);
    assert!(
        v.stop
            .iter()
            .all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES),
        "{:?}",
        v.stop
    );
    assert!(v.stop_token_ids.iter().all(|&t| (t as usize) < vocab));
    if let Some(k) = v.logprobs {
        assert!(k <= llama_server::api::validate::MAX_TOP_LOGPROBS);
    }
    assert!(
        !v.include_usage || v.stream,
        "include_usage without a stream"
    );
}
