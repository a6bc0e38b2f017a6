//! Generated tokens to response text, as a choice is answered: the incremental detokenizer (UTF-8 held back
//! across tokens, dropped when cut off at the end) and the stop-string matcher, through the same
//! `Collector` the handlers use. The input is stop strings and a token stream; the oracle is independent of
//! both: decode all tokens at once, then cut at a stop string.
//!
//! Input layout: byte 0 = number of stop strings (mod 5); each stop = a length byte (mod 9) and that many
//! bytes (lossy UTF-8); the rest = little-endian u16 token ids (mod the vocabulary).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use llama_server::api::respond::Collector;
use llama_server::api::validate::{Endpoint, Sampling, ValidRequest};
use llama_server::sampler::Sampled;
use llama_server::scheduler::FinishReason;

fuzz_target!(|data: &[u8]| {
    let m = common::model();
    let tok = &m.tokenizer;
    let Some((&n_stop, mut rest)) = data.split_first() else {
        return;
    };
    let mut stop = Vec::new();
    for _ in 0..n_stop % 5 {
        let Some((&len, r)) = rest.split_first() else {
            return;
        };
        let len = (len % 9) as usize;
        if r.len() < len {
            return;
        }
        let s = String::from_utf8_lossy(&r[..len]).into_owned();
        if !s.is_empty() {
            stop.push(s);
        }
        rest = &r[len..];
    }
    let vocab = tok.vocab_size() as u32;
    let ids: Vec<u32> = rest
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % vocab)
        .take(64)
        .collect();
    if ids.is_empty() {
        return;
    }
    let req = ValidRequest {
        endpoint: Endpoint::Completions,
        model: "smol".into(),
        prompt_tokens: vec![1],
        max_tokens: ids.len(),
        n: 1,
        sampling: Sampling::greedy(),
        stop: stop.clone(),
        stop_token_ids: Vec::new(),
        stream: true,
        include_usage: false,
        logprobs: None,
        guide: None,
        tools: None,
    };
    let mut c = Collector::new(&req);
    let mut out = String::new();
    let mut stopped = false;
    let mut offset = 0;
    for (i, &id) in ids.iter().enumerate() {
        let last = i + 1 == ids.len();
        let sampled = Sampled {
            token: id,
            logprob: 0.0,
            top_logprobs: Vec::new(),
        };
        let Some(p) = c.on_token(tok, 0, &sampled, last.then_some(FinishReason::Length)) else {
            assert!(
                stopped,
                "an event after the end of a choice that had not stopped"
            );
            break;
        };
        assert_eq!(
            p.text_offset, offset,
            "text_offset is not the bytes sent before"
        );
        offset += p.text.len();
        out.push_str(&p.text);
        if p.hit_stop_string {
            assert_eq!(p.finish, Some(FinishReason::Stop));
            stopped = true;
        } else if last {
            assert!(matches!(
                p.finish,
                Some(FinishReason::Length | FinishReason::Stop)
            ));
        }
        if p.finish.is_some() {
            stopped = true;
            // nothing after the end
            for &later in &ids[i + 1..] {
                let s = Sampled {
                    token: later,
                    logprob: 0.0,
                    top_logprobs: Vec::new(),
                };
                assert!(
                    c.on_token(tok, 0, &s, None).is_none(),
                    "tokens after the end produced text"
                );
            }
            break;
        }
    }
    // The oracle: all tokens decoded at once; a character cut off at the very end is dropped.
    let whole = tok.decode(&ids, true).expect("decode");
    let whole = whole.trim_end_matches('\u{FFFD}');
    let first_stop = stop
        .iter()
        .filter_map(|s| whole.find(s.as_str()).map(|at| (at, s)))
        .min();
    match first_stop {
        None => assert_eq!(
            out, whole,
            "no stop string: the text must be everything decoded"
        ),
        Some(_) => {
            assert!(
                stopped,
                "a stop string occurs in {whole:?} but the choice did not stop"
            );
            assert!(
                whole.starts_with(&out),
                "{out:?} is not a prefix of {whole:?}"
            );
            let tail = &whole[out.len()..];
            assert!(
                stop.iter().any(|s| tail.starts_with(s.as_str())),
                "the text {out:?} does not end where a stop string {stop:?} starts in {whole:?}"
            );
        }
    }
    for s in &stop {
        assert!(
            !out.contains(s.as_str()),
            "stop string {s:?} sent in {out:?}"
        );
    }
});
