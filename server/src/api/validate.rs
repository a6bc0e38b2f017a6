//! Parse, don't validate: one step turns a permissive wire request into a [`ValidRequest`] (token ids, resolved
//! sampling, resolved stop criteria) or an [`ApiError`] naming the field and its bound. Nothing after this
//! re-checks.

use serde_json::Value;

use super::error::ApiError;
use super::tools::{ToolChoice, ToolFormat, ToolUse, call_grammar, parse_tools};
use super::types::{ChatCompletionRequest, CommonParams, CompletionRequest};
use crate::chat::TemplateTools;
use crate::guided::{Constraint, GuideSpec};

/// Most choices per request (`n`).
pub const MAX_N: usize = 16;
/// Most alternatives per token in `logprobs` / `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop strings.
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 1024;
/// Most `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;
/// Bytes of prompt text allowed per token of context: a prompt longer than `max_seq_len × this` cannot fit
/// and is refused before it is tokenized (no token of any vocabulary we serve is that long on average).
pub const PROMPT_BYTES_PER_TOKEN: usize = 64;

/// One chat turn after validation: the message the chat template renders.
pub type ChatTurn = crate::chat::ChatMessage;

/// What validation needs from the tokenizer and chat template.
pub trait PromptEncoder {
    /// Token ids of a prompt, with whatever special prefix (BOS) the model expects. `special`: recognise
    /// special-token text (true for rendered chat templates, false for untrusted raw prompts).
    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String>;
    /// Token ids of a piece of a prompt that continues earlier pieces (no BOS).
    fn encode_piece(&self, text: &str, special: bool) -> Result<Vec<u32>, String>;
    /// Whether special-token text inside chat message content is parsed as control tokens.
    fn special_tokens_in_chat_content(&self) -> bool {
        false
    }
    /// The chat template applied to `turns` (ending with the assistant header when `add_generation_prompt`).
    fn render_chat(
        &self,
        turns: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String, String>;
    /// What the chat template does with tools.
    fn template_tools(&self) -> TemplateTools {
        TemplateTools::Ignored
    }
    /// The chat template applied to `turns` with `tools` (OpenAI's list) in its context.
    fn render_chat_tools(
        &self,
        turns: &[ChatTurn],
        tools: &Value,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let _ = (turns, tools, add_generation_prompt);
        Err("this chat template does not take tools".into())
    }
    /// Token ids at or above this are invalid.
    fn vocab_size(&self) -> usize;
    /// Tokens that end generation unless `ignore_eos`.
    fn eos_token_ids(&self) -> Vec<u32>;
    /// Compiles a request's output constraint against the vocabulary (the error names what is wrong).
    fn compile_guide(&self, spec: GuideSpec) -> Result<(Constraint, u32), String> {
        let _ = spec;
        Err("structured outputs are not available on this server".into())
    }
}

/// Server-side bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub served_model_name: String,
    pub max_seq_len: usize,
    /// Output tokens per choice when a request does not say (`--default-max-tokens`; also bounded by the
    /// context left after the prompt).
    pub default_max_tokens: usize,
}

impl Limits {
    /// Most bytes of prompt text (raw prompt, or all chat contents together) accepted for tokenization.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_seq_len.saturating_mul(PROMPT_BYTES_PER_TOKEN)
    }
}

/// Resolved sampling: plain numbers, no `Option`s except the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    /// `(token id, bias)` pairs added to the logits, bias clamped to [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

/// Which endpoint a request came through (it decides the response shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A checked request, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub prompt_tokens: Vec<u32>,
    /// Most output tokens per choice (prompt + this ≤ max_seq_len).
    pub max_tokens: usize,
    pub n: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Tokens that end a choice with `finish_reason = "stop"` (EOS unless `ignore_eos`, plus `stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(k)`: return the chosen token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// The output constraint (`response_format` JSON modes, `guided_*`, a `required` or named
    /// `tool_choice`), compiled; each choice clones it.
    pub guide: Option<Constraint>,
    /// Tools shown to the model (not with `tool_choice: none`): calls in the output are parsed out of it.
    pub tools: Option<ToolUse>,
}

fn bounded_f(
    param: &str,
    v: Option<f64>,
    default: f64,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<f32, ApiError> {
    let Some(x) = v else {
        return Ok(default as f32);
    };
    let ok = x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi;
    if ok {
        Ok(x as f32)
    } else {
        let open = if lo_open { "(" } else { "[" };
        Err(ApiError::field(
            param,
            format!("{param} must be in {open}{lo}, {hi}], got {x}"),
        ))
    }
}

fn check_model(model: &Option<String>, limits: &Limits) -> Result<String, ApiError> {
    match model {
        Some(m) if m != &limits.served_model_name => Err(ApiError::ModelNotFound(m.clone())),
        _ => Ok(limits.served_model_name.clone()),
    }
}

/// The endpoint-specific parts `check_common` needs.
struct Specific<'a> {
    endpoint: Endpoint,
    prompt_tokens: Vec<u32>,
    prompt_param: &'a str,
    max_tokens: Option<i64>,
    max_tokens_param: &'a str,
    logprobs: Option<usize>,
    /// The grammar of a `required` / named `tool_choice`.
    tool_guide: Option<GuideSpec>,
    tools: Option<ToolUse>,
}

fn check_common(
    c: &CommonParams,
    sp: Specific<'_>,
    enc: &dyn PromptEncoder,
    limits: &Limits,
) -> Result<ValidRequest, ApiError> {
    let Specific {
        endpoint,
        prompt_tokens,
        prompt_param,
        max_tokens,
        max_tokens_param,
        logprobs,
        tool_guide,
        tools,
    } = sp;
    let model = check_model(&c.model, limits)?;
    let max_seq_len = limits.max_seq_len;
    if prompt_tokens.is_empty() {
        return Err(ApiError::field(
            prompt_param,
            format!("{prompt_param} must not be empty"),
        ));
    }
    if prompt_tokens.len() >= max_seq_len {
        return Err(ApiError::field(
            prompt_param,
            format!(
                "{prompt_param} has {} tokens; this model's maximum context length is {max_seq_len} tokens \
                 (prompt + output), so the prompt must be shorter than {max_seq_len}",
                prompt_tokens.len()
            ),
        ));
    }
    let room = max_seq_len - prompt_tokens.len();
    let max_tokens = match max_tokens {
        None => room.min(limits.default_max_tokens.max(1)),
        Some(m) if m < 1 => {
            return Err(ApiError::field(
                max_tokens_param,
                format!("{max_tokens_param} must be at least 1, got {m}"),
            ));
        }
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::field(
                max_tokens_param,
                format!(
                    "{max_tokens_param} is {m} but the prompt has {} tokens and the maximum context length is \
                     {max_seq_len}: at most {room} tokens can be generated",
                    prompt_tokens.len()
                ),
            ));
        }
        Some(m) => m as usize,
    };
    let n = match c.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::field(
                "n",
                format!("n must be in [1, {MAX_N}], got {n}"),
            ));
        }
    };
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::field(
                "top_k",
                format!("top_k must be -1 (off) or positive, got {k}"),
            ));
        }
    };
    let seed = match c.seed {
        None => None,
        Some(s) if s >= 0 => Some(s as u64),
        Some(s) => {
            return Err(ApiError::field(
                "seed",
                format!("seed must be non-negative, got {s}"),
            ));
        }
    };
    let sampling = Sampling {
        temperature: bounded_f("temperature", c.temperature, 1.0, 0.0, 2.0, false)?,
        top_p: bounded_f("top_p", c.top_p, 1.0, 0.0, 1.0, true)?,
        top_k,
        min_p: bounded_f("min_p", c.min_p, 0.0, 0.0, 1.0, false)?,
        presence_penalty: bounded_f(
            "presence_penalty",
            c.presence_penalty,
            0.0,
            -2.0,
            2.0,
            false,
        )?,
        frequency_penalty: bounded_f(
            "frequency_penalty",
            c.frequency_penalty,
            0.0,
            -2.0,
            2.0,
            false,
        )?,
        repetition_penalty: bounded_f(
            "repetition_penalty",
            c.repetition_penalty,
            1.0,
            0.0,
            2.0,
            true,
        )?,
        seed,
        logit_bias: logit_bias(c.logit_bias.as_ref(), enc.vocab_size())?,
    };
    let spec = match (guide_spec(c)?, tool_guide) {
        (Some((param, _)), Some(_)) => {
            return Err(ApiError::field(
                "tool_choice",
                format!(
                    "a required or named tool_choice constrains the output itself; it cannot be combined \
                     with {param}"
                ),
            ));
        }
        (None, Some(tool)) => Some(("tool_choice", tool)),
        (other, None) => other,
    };
    let guide = match spec {
        None => None,
        Some((param, spec)) => Some(
            enc.compile_guide(spec)
                .map_err(|e| ApiError::field(param, e))?,
        ),
    };
    let stop = match &c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ApiError::field(
                            "stop",
                            "stop must be a string or an array of strings",
                        ));
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                "stop must be a string or an array of strings",
            ));
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::field(
            "stop",
            format!("at most {MAX_STOP} stop strings, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "stop strings must not be empty"));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::field(
            "stop",
            format!(
                "stop strings must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                long.len()
            ),
        ));
    }
    let vocab = enc.vocab_size();
    let mut stop_token_ids = Vec::new();
    if !c.ignore_eos.unwrap_or(false) {
        stop_token_ids.extend(enc.eos_token_ids());
    }
    let guide = guide.map(|(constraint, eos)| {
        // a finished grammar allows only this token: it must end the choice even with `ignore_eos`
        if !stop_token_ids.contains(&eos) {
            stop_token_ids.push(eos);
        }
        constraint
    });
    for &t in c.stop_token_ids.iter().flatten() {
        if t < 0 || t as u64 >= vocab as u64 {
            return Err(ApiError::field(
                "stop_token_ids",
                format!("token ids must be in [0, {vocab}), got {t}"),
            ));
        }
        stop_token_ids.push(t as u32);
    }
    let stream = c.stream.unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::field(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = c
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(ValidRequest {
        endpoint,
        model,
        prompt_tokens,
        max_tokens,
        n,
        sampling,
        stop,
        stop_token_ids,
        stream,
        include_usage,
        logprobs,
        guide,
        tools,
    })
}

/// `logit_bias`: an object of token id (a decimal string, as JSON keys are) → bias; biases beyond ±100 are
/// clamped to it (as OpenAI does), anything else that is wrong is refused naming the entry.
fn logit_bias(v: Option<&Value>, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::field(
                "logit_bias",
                "logit_bias must be an object mapping token ids to biases",
            ));
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::field(
            "logit_bias",
            format!(
                "at most {MAX_LOGIT_BIAS} logit_bias entries, got {}",
                map.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (k, b) in map {
        let id = k
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&id| id < vocab as u64)
            .ok_or_else(|| {
                ApiError::field(
                    "logit_bias",
                    format!("logit_bias keys must be token ids in [0, {vocab}), got {k:?}"),
                )
            })?;
        let bias = b.as_f64().filter(|b| b.is_finite()).ok_or_else(|| {
            ApiError::field(
                "logit_bias",
                format!("logit_bias[{k:?}] must be a number, got {b}"),
            )
        })?;
        out.push((id as u32, bias.clamp(-100.0, 100.0) as f32));
    }
    out.sort_by_key(|&(id, _)| id);
    // Two spellings of one id (`"7"` and `" 7"` or `"07"`) are distinct JSON keys: refuse them rather than
    // apply one of the two biases at random.
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::field(
            "logit_bias",
            format!("logit_bias names token {} more than once", w[0].0),
        ));
    }
    Ok(out)
}

/// Refuses a request whose prompt text is longer than any prompt that could fit the context.
pub fn check_prompt_bytes(param: &str, bytes: usize, limits: &Limits) -> Result<(), ApiError> {
    let max = limits.max_prompt_bytes();
    if bytes > max {
        return Err(ApiError::field(
            param,
            format!(
                "{param} is {bytes} bytes; at most {max} bytes are accepted ({} tokens of context × \
                 {PROMPT_BYTES_PER_TOKEN} bytes), so it could not fit",
                limits.max_seq_len
            ),
        ));
    }
    Ok(())
}

fn check_top_logprobs(param: &str, k: i64) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(ApiError::field(
            param,
            format!("{param} must be in [0, {MAX_TOP_LOGPROBS}], got {k}"),
        ))
    }
}

fn token_ids(param: &str, items: &[Value], vocab: usize) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| match v.as_i64() {
            Some(t) if t >= 0 && (t as u64) < vocab as u64 => Ok(t as u32),
            _ => Err(ApiError::field(
                param,
                format!("token ids must be integers in [0, {vocab}), got {v}"),
            )),
        })
        .collect()
}

fn encode(
    enc: &dyn PromptEncoder,
    param: &str,
    text: &str,
    special: bool,
) -> Result<Vec<u32>, ApiError> {
    enc.encode(text, special)
        .map_err(|e| ApiError::field(param, format!("cannot tokenize {param}: {e}")))
}

/// Checks a `/v1/completions` request.
pub fn validate_completion(
    req: &CompletionRequest,
    enc: &dyn PromptEncoder,
    limits: &Limits,
) -> Result<ValidRequest, ApiError> {
    check_model(&req.common.model, limits)?;
    let vocab = enc.vocab_size();
    let one_prompt = "only one prompt per request is supported";
    // A raw prompt is the caller's whole prompt: special-token text in it is parsed (as vLLM and llama.cpp
    // do), so a hand-formatted chat prompt means what it says.
    let prompt_tokens = match &req.prompt {
        None | Some(Value::Null) => return Err(ApiError::field("prompt", "prompt is required")),
        Some(Value::String(s)) => {
            check_prompt_bytes("prompt", s.len(), limits)?;
            encode(enc, "prompt", s, true)?
        }
        Some(Value::Array(items)) => match items.as_slice() {
            [] => return Err(ApiError::field("prompt", "prompt must not be empty")),
            [Value::String(s)] => {
                check_prompt_bytes("prompt", s.len(), limits)?;
                encode(enc, "prompt", s, true)?
            }
            [Value::Array(ids)] => token_ids("prompt", ids, vocab)?,
            [Value::String(_) | Value::Array(_), _, ..] => {
                return Err(ApiError::field("prompt", one_prompt));
            }
            ids => token_ids("prompt", ids, vocab)?,
        },
        Some(_) => {
            return Err(ApiError::field(
                "prompt",
                "prompt must be a string or an array of token ids",
            ));
        }
    };
    if req.echo == Some(true) {
        return Err(ApiError::field("echo", "echo is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field("suffix", "suffix is not supported"));
    }
    if let Some(b) = req.best_of
        && b != 1
        && Some(b) != req.common.n
    {
        return Err(ApiError::field(
            "best_of",
            "best_of must equal n (it is not supported otherwise)",
        ));
    }
    let logprobs = req
        .logprobs
        .map(|k| check_top_logprobs("logprobs", k))
        .transpose()?;
    let sp = Specific {
        endpoint: Endpoint::Completions,
        prompt_tokens,
        prompt_param: "prompt",
        max_tokens: req.common.max_tokens,
        max_tokens_param: "max_tokens",
        logprobs,
        tool_guide: None,
        tools: None,
    };
    check_common(&req.common, sp, enc, limits)
}

/// Checks a `/v1/chat/completions` request.
pub fn validate_chat(
    req: &ChatCompletionRequest,
    enc: &dyn PromptEncoder,
    limits: &Limits,
) -> Result<ValidRequest, ApiError> {
    check_model(&req.common.model, limits)?;
    let Some(messages) = &req.messages else {
        return Err(ApiError::field("messages", "messages is required"));
    };
    for (field, value) in [
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::field(
                field,
                format!(
                    "{field} (OpenAI's deprecated function calling) is not supported: use tools and \
                     tool_choice"
                ),
            ));
        }
    }
    let tools = parse_tools(req.tools.as_ref(), req.tool_choice.as_ref())?;
    let parallel = match &req.parallel_tool_calls {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::field(
                "parallel_tool_calls",
                "parallel_tool_calls must be a boolean",
            ));
        }
    };
    let format = match enc.template_tools() {
        TemplateTools::Ignored | TemplateTools::Hermes => ToolFormat::Hermes,
        TemplateTools::Llama3Json => ToolFormat::Llama3Json,
        TemplateTools::Unknown if tools.is_some() => {
            return Err(ApiError::field(
                "tools",
                "this model's chat template renders tools in a format the server cannot parse calls of \
                 (supported: Llama 3.x JSON calls and Hermes-style <tool_call> blocks, or a template that \
                 ignores tools, for which the server describes them itself)",
            ));
        }
        TemplateTools::Unknown => ToolFormat::Hermes,
    };
    // `tool_choice: none` hides the tools from the model (and parses nothing)
    let shown = tools
        .as_ref()
        .filter(|(_, choice)| *choice != ToolChoice::None);
    let content_bytes: usize = messages
        .iter()
        .map(|m| {
            m.get("content").map_or(0, |c| c.to_string().len())
                + m.get("tool_calls").map_or(0, |c| c.to_string().len())
        })
        .sum::<usize>()
        + req.tools.as_ref().map_or(0, |t| t.to_string().len());
    check_prompt_bytes("messages", content_bytes, limits)?;
    let prompt_tokens = chat_prompt_tokens(messages, true, shown.map(|(t, _)| t.as_slice()), enc)?;
    let tool_guide = shown
        .and_then(|(t, choice)| call_grammar(t, choice, parallel, format).map(GuideSpec::ToolCall));
    let tools = shown.map(|(t, _)| ToolUse {
        tools: t.clone(),
        format,
    });
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::field(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ));
        }
        (false, None) => None,
        (true, k) => Some(check_top_logprobs("top_logprobs", k.unwrap_or(0))?),
    };
    let (max_tokens, param) = match req.max_completion_tokens {
        Some(m) => (Some(m), "max_completion_tokens"),
        None => (req.common.max_tokens, "max_tokens"),
    };
    let sp = Specific {
        endpoint: Endpoint::Chat,
        prompt_tokens,
        prompt_param: "messages",
        max_tokens,
        max_tokens_param: param,
        logprobs,
        tool_guide,
        tools,
    };
    check_common(&req.common, sp, enc, limits)
}

mod chat;
mod guide;
#[cfg(test)]
pub(crate) mod tests;

pub use chat::chat_prompt_tokens;
use guide::guide_spec;
