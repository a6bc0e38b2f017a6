//! Turning engine token events into OpenAI responses: per-choice detokenization, stop strings, logprobs, and the
//! stream / non-stream body shapes.

use std::collections::BTreeMap;

use crate::engine::Event;
use crate::sampler::Sampled;
use crate::scheduler::FinishReason;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

use super::stop::StopMatcher;
use super::tools::{CallCatcher, Tool, ToolCall};
use super::types::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatDelta,
    ChatLogprobs, ChatMessageOut, ChatTokenLogprob, CompletionChoice, CompletionLogprobs,
    CompletionResponse, FunctionCallOut, ToolCallDelta, ToolCallOut, TopLogprob, Usage,
};
use super::validate::{Endpoint, ValidRequest};

/// Text of one token for logprobs (special tokens included).
fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// One choice's progress.
#[derive(Debug)]
pub struct ChoiceState {
    detok: IncrementalDecoder,
    stop: StopMatcher,
    pub completion_tokens: usize,
    pub finish: Option<FinishReason>,
    /// Bytes of text emitted so far (completions `text_offset`).
    emitted: usize,
    /// Tool calls are parsed out of this choice's text.
    calls: Option<CallCatcher>,
}

/// What one token event produced for its choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub index: usize,
    pub text: String,
    /// Log-probability entries for this token (when requested).
    pub logprob: Option<TokenLogprob>,
    /// Set when the choice ended with this token.
    pub finish: Option<FinishReason>,
    /// The choice ended on a stop string: the engine must be told to stop it.
    pub hit_stop_string: bool,
    pub text_offset: usize,
    /// The calls the choice made (on its last piece).
    pub tool_calls: Vec<ToolCall>,
}

/// A sampled token's text and log-probability, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// All choices of one request.
#[derive(Debug)]
pub struct Collector {
    pub choices: Vec<ChoiceState>,
    logprobs: bool,
    /// The tools calls may name (empty without tools).
    tools: Vec<Tool>,
}

impl Collector {
    pub fn new(req: &ValidRequest) -> Self {
        let choices = (0..req.n)
            .map(|_| ChoiceState {
                detok: IncrementalDecoder::new(true),
                stop: StopMatcher::new(req.stop.clone()),
                completion_tokens: 0,
                finish: None,
                emitted: 0,
                calls: req.tools.as_ref().map(|t| CallCatcher::new(t.format)),
            })
            .collect();
        Self {
            choices,
            logprobs: req.logprobs.is_some(),
            tools: req
                .tools
                .as_ref()
                .map(|t| t.tools.clone())
                .unwrap_or_default(),
        }
    }

    pub fn all_finished(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.completion_tokens).sum()
    }

    /// Applies one token event; `None` for events of an already finished choice.
    pub fn on_token(
        &mut self,
        tok: &Tokenizer,
        index: usize,
        sampled: &Sampled,
        finish: Option<FinishReason>,
    ) -> Option<Piece> {
        let logprobs = self.logprobs;
        let c = self.choices.get_mut(index)?;
        if c.finish.is_some() {
            return None;
        }
        c.completion_tokens += 1;
        let decoded = c.detok.push(tok, sampled.token).unwrap_or_default();
        let emit = c.stop.push(&decoded);
        let mut text = emit.text;
        let mut finish = finish;
        let hit_stop_string = emit.stopped;
        if hit_stop_string {
            finish = Some(FinishReason::Stop);
        } else if finish.is_some() {
            let rest = c.detok.flush(tok).unwrap_or_default();
            let more = c.stop.push(&rest);
            text.push_str(&more.text);
            if more.stopped {
                finish = Some(FinishReason::Stop);
            } else {
                text.push_str(&c.stop.finish());
            }
        }
        let mut tool_calls = Vec::new();
        if let Some(catcher) = &mut c.calls {
            text = catcher.push(&text);
            if finish.is_some() {
                let (rest, calls) = catcher.finish(&self.tools);
                text.push_str(&rest);
                tool_calls = calls;
            }
        }
        c.finish = finish;
        let text_offset = c.emitted;
        c.emitted += text.len();
        let logprob = logprobs.then(|| {
            let top = sampled
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (token_text(tok, id), lp))
                .collect();
            TokenLogprob {
                token: token_text(tok, sampled.token),
                logprob: sampled.logprob,
                top,
            }
        });
        Some(Piece {
            index,
            text,
            logprob,
            finish,
            hit_stop_string,
            text_offset,
            tool_calls,
        })
    }
}

/// The wire form of a choice's calls; ids are unique per response (`call_<response>_<choice>_<k>`).
fn calls_out(meta: &ResponseMeta, index: usize, calls: &[ToolCall]) -> Vec<ToolCallOut> {
    let id = meta.id.rsplit('-').next().unwrap_or_default();
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| ToolCallOut {
            id: format!("call_{id}_{index}_{k}"),
            kind: "function".into(),
            function: FunctionCallOut {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect()
}

/// A choice's `finish_reason`: `tool_calls` when it ended with calls.
fn reason_str(f: FinishReason, called: bool) -> &'static str {
    if called { "tool_calls" } else { finish_str(f) }
}

fn chat_logprob(p: &Piece) -> Option<ChatLogprobs> {
    let TokenLogprob {
        token,
        logprob,
        top,
    } = p.logprob.clone()?;
    let top_logprobs = top
        .into_iter()
        .map(|(token, logprob)| TopLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob,
        })
        .collect();
    Some(ChatLogprobs {
        content: vec![ChatTokenLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob,
            top_logprobs,
        }],
    })
}

fn completion_logprob(p: &Piece) -> Option<CompletionLogprobs> {
    let TokenLogprob {
        token,
        logprob,
        top,
    } = p.logprob.clone()?;
    Some(CompletionLogprobs {
        tokens: vec![token],
        token_logprobs: vec![logprob],
        top_logprobs: vec![top.into_iter().collect::<BTreeMap<_, _>>()],
        text_offset: vec![p.text_offset],
    })
}

fn merge_completion(into: &mut Option<CompletionLogprobs>, p: Option<CompletionLogprobs>) {
    if let Some(p) = p {
        let t = into.get_or_insert_with(CompletionLogprobs::default);
        t.tokens.extend(p.tokens);
        t.token_logprobs.extend(p.token_logprobs);
        t.top_logprobs.extend(p.top_logprobs);
        t.text_offset.extend(p.text_offset);
    }
}

/// Identity of one response.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// The request's `x-request-id` (logs only; not part of the body).
    pub request_id: String,
}

/// Accumulates a non-streamed response.
#[derive(Debug)]
pub struct FullResponse {
    texts: Vec<String>,
    calls: Vec<Vec<ToolCall>>,
    chat_lp: Vec<Option<ChatLogprobs>>,
    comp_lp: Vec<Option<CompletionLogprobs>>,
}

impl FullResponse {
    pub fn new(n: usize) -> Self {
        Self {
            texts: vec![String::new(); n],
            calls: vec![Vec::new(); n],
            chat_lp: vec![None; n],
            comp_lp: vec![None; n],
        }
    }

    pub fn add(&mut self, p: &Piece) {
        let i = p.index;
        if let Some(t) = self.texts.get_mut(i) {
            t.push_str(&p.text);
        }
        if let Some(c) = self.calls.get_mut(i) {
            c.extend(p.tool_calls.iter().cloned());
        }
        if let Some(lp) = chat_logprob(p)
            && let Some(slot) = self.chat_lp.get_mut(i)
        {
            slot.get_or_insert_with(ChatLogprobs::default)
                .content
                .extend(lp.content);
        }
        if let Some(slot) = self.comp_lp.get_mut(i) {
            merge_completion(slot, completion_logprob(p));
        }
    }

    pub fn finish_json(
        self,
        endpoint: Endpoint,
        meta: &ResponseMeta,
        col: &Collector,
        usage: Usage,
    ) -> serde_json::Value {
        let calls = self.calls;
        let reason = |i: usize| {
            let called = calls.get(i).is_some_and(|c| !c.is_empty());
            col.choices
                .get(i)
                .and_then(|c| c.finish.map(|f| reason_str(f, called).to_string()))
        };
        let v = match endpoint {
            Endpoint::Chat => serde_json::to_value(ChatCompletionResponse {
                id: meta.id.clone(),
                object: "chat.completion".into(),
                created: meta.created,
                model: meta.model.clone(),
                choices: self
                    .texts
                    .into_iter()
                    .zip(self.chat_lp)
                    .enumerate()
                    .map(|(index, (content, logprobs))| {
                        let calls = calls.get(index).map(Vec::as_slice).unwrap_or_default();
                        let tool_calls = (!calls.is_empty()).then(|| calls_out(meta, index, calls));
                        ChatChoice {
                            index,
                            message: ChatMessageOut {
                                role: "assistant".into(),
                                // a reply that is only calls has null content, as OpenAI's
                                content: (tool_calls.is_none() || !content.is_empty())
                                    .then_some(content),
                                tool_calls,
                            },
                            logprobs,
                            finish_reason: reason(index),
                        }
                    })
                    .collect(),
                usage: Some(usage),
            }),
            Endpoint::Completions => serde_json::to_value(CompletionResponse {
                id: meta.id.clone(),
                object: "text_completion".into(),
                created: meta.created,
                model: meta.model.clone(),
                choices: self
                    .texts
                    .into_iter()
                    .zip(self.comp_lp)
                    .enumerate()
                    .map(|(index, (text, logprobs))| CompletionChoice {
                        index,
                        text,
                        logprobs,
                        finish_reason: reason(index),
                    })
                    .collect(),
                usage: Some(usage),
            }),
        };
        v.unwrap_or_default()
    }
}

/// OpenAI finish_reason: an aborted choice (only seen by clients of a shutting-down server) reads as "abort".
pub fn finish_str(f: FinishReason) -> &'static str {
    f.as_str()
}

/// The SSE chunk for one piece (None when there is nothing to say: empty text, no logprobs, not finished).
pub fn chunk_json(endpoint: Endpoint, meta: &ResponseMeta, p: &Piece) -> Option<serde_json::Value> {
    if p.text.is_empty() && p.finish.is_none() && p.logprob.is_none() {
        return None;
    }
    let called = !p.tool_calls.is_empty();
    let finish_reason = p.finish.map(|f| reason_str(f, called).to_string());
    let v = match endpoint {
        Endpoint::Chat => serde_json::to_value(ChatCompletionChunk {
            id: meta.id.clone(),
            object: "chat.completion.chunk".into(),
            created: meta.created,
            model: meta.model.clone(),
            choices: vec![ChatChunkChoice {
                index: p.index,
                delta: ChatDelta {
                    role: None,
                    content: (!called || !p.text.is_empty()).then(|| p.text.clone()),
                    tool_calls: called.then(|| {
                        calls_out(meta, p.index, &p.tool_calls)
                            .into_iter()
                            .enumerate()
                            .map(|(index, call)| ToolCallDelta { index, call })
                            .collect()
                    }),
                },
                logprobs: chat_logprob(p),
                finish_reason,
            }],
            usage: None,
        }),
        Endpoint::Completions => serde_json::to_value(CompletionResponse {
            id: meta.id.clone(),
            object: "text_completion".into(),
            created: meta.created,
            model: meta.model.clone(),
            choices: vec![CompletionChoice {
                index: p.index,
                text: p.text.clone(),
                logprobs: completion_logprob(p),
                finish_reason,
            }],
            usage: None,
        }),
    };
    v.ok()
}

/// The first chat chunk of each choice: the assistant role with empty content.
pub fn role_chunk(meta: &ResponseMeta, index: usize) -> serde_json::Value {
    serde_json::to_value(ChatCompletionChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: None,
        }],
        usage: None,
    })
    .unwrap_or_default()
}

/// The final usage-only chunk (`stream_options.include_usage`).
pub fn usage_chunk(endpoint: Endpoint, meta: &ResponseMeta, usage: Usage) -> serde_json::Value {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
    };
    serde_json::json!({
        "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
        "choices": [], "usage": usage,
    })
}

/// Whether an event ends the whole request for the collector.
pub fn is_failure(ev: &Event) -> Option<&str> {
    match ev {
        Event::Failed(e) => Some(e),
        Event::Token { .. } => None,
    }
}
