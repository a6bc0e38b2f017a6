//! actix-web handlers. Each one: auth → parse → validate → submit → respond. Errors are [`ApiError`]s, counted
//! in metrics by label.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::engine::{EngineHandle, Event, SubmitError};
use crate::metrics::Metrics;
use crate::scheduler::FinishReason;
use crate::tokenizer::Tokenizer;

use super::error::ApiError;
use super::respond::{Collector, FullResponse, ResponseMeta, chunk_json, role_chunk, usage_chunk};
use super::sse;
use super::types::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse, ModelCard,
    ModelList, TokenizeRequest, TokenizeResponse, Usage,
};
use super::validate::{
    ChatTurn, Endpoint, Limits, PromptEncoder, ValidRequest, chat_prompt_tokens,
};

/// Shared state of all handlers.
#[derive(Debug)]
pub struct AppState {
    /// Set once the weights are loaded and the engine thread runs.
    pub engine: OnceLock<EngineHandle>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Arc<ChatTemplate>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub api_key: Option<String>,
    /// False until the model is loaded; false again once draining.
    pub ready: AtomicBool,
    pub started: u64,
}

/// The tokenizer + chat template as validation sees them.
struct Encoder<'a>(&'a AppState);

impl PromptEncoder for Encoder<'_> {
    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        self.0
            .tokenizer
            .encode(text, true, special)
            .map_err(|e| e.to_string())
    }
    fn render_chat(
        &self,
        turns: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let msgs: Vec<ChatMessage> = turns
            .iter()
            .map(|t| ChatMessage::new(t.role.clone(), t.content.clone()))
            .collect();
        self.0
            .chat_template
            .render(&msgs, add_generation_prompt)
            .map_err(|e| e.to_string())
    }
    fn vocab_size(&self) -> usize {
        self.0.tokenizer.vocab_size()
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.0.tokenizer.eos_token_ids().to_vec()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl AppState {
    fn check_auth(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(key.as_str()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The engine, or 503 while the model is still loading.
    fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.engine.get().ok_or(ApiError::Loading)
    }

    fn count(&self, e: ApiError) -> ApiError {
        self.metrics
            .request_errors
            .with_label_values(&[e.label()])
            .inc();
        e
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let valid = checked(&state, &req, &body, |r: &CompletionRequest, enc, limits| {
        super::validate::validate_completion(r, enc, limits)
    })?;
    generate(state, valid).await
}

pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let valid = checked(
        &state,
        &req,
        &body,
        |r: &ChatCompletionRequest, enc, limits| super::validate::validate_chat(r, enc, limits),
    )?;
    generate(state, valid).await
}

/// Authenticates, parses and validates a generation request; every refusal is counted.
fn checked<T: DeserializeOwned>(
    state: &AppState,
    req: &HttpRequest,
    body: &Bytes,
    validate: impl FnOnce(&T, &Encoder<'_>, &Limits) -> Result<ValidRequest, ApiError>,
) -> Result<ValidRequest, ApiError> {
    (|| {
        state.check_auth(req)?;
        validate(&parse(body)?, &Encoder(state), &state.limits)
    })()
    .map_err(|e| state.count(e))
}

/// Submits a checked request and answers with one JSON body or an SSE stream.
async fn generate(
    state: web::Data<AppState>,
    valid: ValidRequest,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine().map_err(|e| state.count(e))?.clone();
    let (id, mut rx) = engine.submit(valid.clone()).map_err(|e| {
        state.count(match e {
            SubmitError::QueueFull {
                queued,
                retry_after_s,
            } => ApiError::QueueFull {
                queued,
                retry_after_s,
            },
            SubmitError::Draining => ApiError::Draining,
            SubmitError::Stopped => ApiError::Internal("the engine has stopped".into()),
        })
    })?;
    let prefix = match valid.endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let meta = ResponseMeta {
        id: format!("{prefix}-{id}"),
        created: now_unix(),
        model: valid.model.clone(),
    };
    let started = Instant::now();
    let mut col = Collector::new(&valid);
    let prompt_tokens = valid.prompt_tokens.len();

    if !valid.stream {
        let mut full = FullResponse::new(valid.n);
        while !col.all_finished() {
            match rx.recv().await {
                Some(Event::Token {
                    index,
                    sampled,
                    finish,
                }) => {
                    if let Some(p) = col.on_token(&state.tokenizer, index, &sampled, finish) {
                        if p.hit_stop_string {
                            engine.abort_choice(id, index, FinishReason::Stop);
                        }
                        full.add(&p);
                    }
                }
                Some(Event::Failed(e)) => return Err(state.count(ApiError::Internal(e))),
                None => {
                    return Err(
                        state.count(ApiError::Internal("the engine dropped the request".into()))
                    );
                }
            }
        }
        let usage = Usage::new(prompt_tokens, col.completion_tokens());
        log_request(&meta, &valid, usage, started, &col);
        return Ok(HttpResponse::Ok().json(full.finish_json(valid.endpoint, &meta, &col, usage)));
    }

    // Streaming: the stream owns the receiver; when the client disconnects actix drops the stream, the receiver
    // closes, and the engine aborts the request before its next step.
    let state2 = state.clone();
    let mut opening: Vec<String> = Vec::new();
    if valid.endpoint == Endpoint::Chat {
        opening.extend((0..valid.n).map(|i| sse::event(&role_chunk(&meta, i))));
    }
    struct St {
        rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
        col: Collector,
        queue: std::collections::VecDeque<String>,
        done: bool,
    }
    let st = St {
        rx,
        col,
        queue: opening.into(),
        done: false,
    };
    let stream = futures::stream::unfold(st, move |mut st| {
        let state = state2.clone();
        let engine = engine.clone();
        let meta = meta.clone();
        let valid = valid.clone();
        async move {
            loop {
                if let Some(chunk) = st.queue.pop_front() {
                    return Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), st));
                }
                if st.done {
                    return None;
                }
                if st.col.all_finished() {
                    st.done = true;
                    let usage = Usage::new(prompt_tokens, st.col.completion_tokens());
                    if valid.include_usage {
                        st.queue
                            .push_back(sse::event(&usage_chunk(valid.endpoint, &meta, usage)));
                    }
                    st.queue.push_back(sse::DONE.to_string());
                    log_request(&meta, &valid, usage, started, &st.col);
                    continue;
                }
                match st.rx.recv().await {
                    Some(Event::Token {
                        index,
                        sampled,
                        finish,
                    }) => {
                        if let Some(p) = st.col.on_token(&state.tokenizer, index, &sampled, finish)
                        {
                            if p.hit_stop_string {
                                engine.abort_choice(id, index, FinishReason::Stop);
                            }
                            if let Some(v) = chunk_json(valid.endpoint, &meta, &p) {
                                st.queue.push_back(sse::event(&v));
                            }
                        }
                    }
                    Some(Event::Failed(e)) => {
                        st.queue
                            .push_back(sse::event(&ApiError::Internal(e).body()));
                        st.queue.push_back(sse::DONE.to_string());
                        st.done = true;
                    }
                    None => {
                        let e = ApiError::Internal("the engine dropped the request".into());
                        st.queue.push_back(sse::event(&e.body()));
                        st.queue.push_back(sse::DONE.to_string());
                        st.done = true;
                    }
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(stream))
}

fn log_request(
    meta: &ResponseMeta,
    valid: &ValidRequest,
    usage: Usage,
    started: Instant,
    col: &Collector,
) {
    let reasons: Vec<&str> = col
        .choices
        .iter()
        .filter_map(|c| c.finish.map(FinishReason::as_str))
        .collect();
    tracing::info!(
        request_id = %meta.id,
        stream = valid.stream,
        n = valid.n,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        duration_ms = started.elapsed().as_millis() as u64,
        finish = ?reasons,
        "request finished"
    );
}

pub async fn models(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.check_auth(&req).map_err(|e| state.count(e))?;
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.limits.served_model_name.clone(),
            object: "model".into(),
            created: state.started,
            owned_by: "llama-operator".into(),
            max_model_len: state.limits.max_seq_len,
        }],
    }))
}

pub async fn tokenize(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let out = (|| {
        state.check_auth(&req)?;
        let r: TokenizeRequest = parse(&body)?;
        if let Some(m) = &r.model
            && m != &state.limits.served_model_name
        {
            return Err(ApiError::ModelNotFound(m.clone()));
        }
        let enc = Encoder(&state);
        let tokens = match (&r.prompt, &r.messages) {
            (Some(p), None) => enc
                .encode(p, false)
                .map_err(|e| ApiError::field("prompt", e))?,
            (None, Some(m)) => {
                chat_prompt_tokens(m, r.add_generation_prompt.unwrap_or(true), &enc)?
            }
            _ => {
                return Err(ApiError::field(
                    "prompt",
                    "exactly one of prompt or messages is required",
                ));
            }
        };
        Ok(TokenizeResponse {
            count: tokens.len(),
            tokens,
            max_model_len: state.limits.max_seq_len,
        })
    })()
    .map_err(|e| state.count(e))?;
    Ok(HttpResponse::Ok().json(out))
}

pub async fn detokenize(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let out = (|| {
        state.check_auth(&req)?;
        let r: DetokenizeRequest = parse(&body)?;
        let vocab = state.tokenizer.vocab_size();
        let Some(tokens) = r.tokens else {
            return Err(ApiError::field("tokens", "tokens is required"));
        };
        let ids = tokens
            .iter()
            .map(|&t| {
                u32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < vocab)
                    .ok_or_else(|| {
                        ApiError::field(
                            "tokens",
                            format!("token ids must be in [0, {vocab}), got {t}"),
                        )
                    })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let prompt = state
            .tokenizer
            .decode(&ids, false)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(DetokenizeResponse { prompt })
    })()
    .map_err(|e| state.count(e))?;
    Ok(HttpResponse::Ok().json(out))
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let draining = state.engine.get().is_none_or(EngineHandle::is_draining);
    if state.ready.load(Ordering::SeqCst) && !draining {
        HttpResponse::Ok().body("ready")
    } else {
        HttpResponse::ServiceUnavailable().body("not ready")
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/completions", web::post().to(completions))
        .route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/models", web::get().to(models))
        .route("/tokenize", web::post().to(tokenize))
        .route("/detokenize", web::post().to(detokenize))
        .route(llama_contract::paths::HEALTH, web::get().to(health))
        .route(llama_contract::paths::READY, web::get().to(ready))
        .route(llama_contract::paths::METRICS, web::get().to(metrics));
}
