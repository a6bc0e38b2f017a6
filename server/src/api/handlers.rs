//! actix-web handlers. Each one: auth → parse → validate → submit → respond. Errors are [`ApiError`]s, counted
//! in metrics by label.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;

use crate::chat::{ChatTemplate, TemplateTools};
use crate::engine::{EngineHandle, Event, SubmitError};
use crate::guided::{Constraint, Guidance, GuideSpec};
use crate::metrics::Metrics;
use crate::scheduler::FinishReason;
use crate::tokenizer::Tokenizer;

use super::conn::ConnWatch;
use super::error::ApiError;
use super::prep::PrepPool;
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
    pub api_keys: super::keys::ApiKeys,
    /// False until the model is loaded; false again once draining.
    pub ready: AtomicBool,
    pub started: u64,
    /// Where requests are parsed, templated and tokenized (never on the HTTP workers).
    pub prep: PrepPool,
    /// Chat message content may contain special-token text that is parsed as control tokens
    /// (`--chat-special-tokens`; off: content is user text).
    pub chat_special_tokens: bool,
    /// The grammar engine over the model's vocabulary (built on the first constrained request; where the
    /// vocabulary's token bytes cannot be derived, constraints are refused with a 400 naming why). `None` only
    /// for a server built without one: constraints are then refused too.
    pub guidance: Option<Arc<Guidance>>,
}

/// The tokenizer + chat template as validation sees them (public for the fuzz targets in `server/fuzz`).
#[derive(Debug, Clone, Copy)]
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub chat_template: &'a ChatTemplate,
    /// Chat message content may contain special-token text that is parsed as control tokens.
    pub chat_special_tokens: bool,
    /// Compiles output constraints (`None`: they are refused).
    pub guidance: Option<&'a Guidance>,
}

impl<'a> Encoder<'a> {
    fn of(state: &'a AppState) -> Self {
        Self {
            tokenizer: &state.tokenizer,
            chat_template: &state.chat_template,
            chat_special_tokens: state.chat_special_tokens,
            guidance: state.guidance.as_deref(),
        }
    }
}

impl PromptEncoder for Encoder<'_> {
    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, true, special)
            .map_err(|e| e.to_string())
    }
    fn encode_piece(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, false, special)
            .map_err(|e| e.to_string())
    }
    fn special_tokens_in_chat_content(&self) -> bool {
        self.chat_special_tokens
    }
    fn render_chat(
        &self,
        turns: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.chat_template
            .render(turns, add_generation_prompt)
            .map_err(|e| e.to_string())
    }
    fn template_tools(&self) -> TemplateTools {
        self.chat_template.tools()
    }
    fn render_chat_tools(
        &self,
        turns: &[ChatTurn],
        tools: &serde_json::Value,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.chat_template
            .render_with_tools(turns, Some(tools), add_generation_prompt)
            .map_err(|e| e.to_string())
    }
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_token_ids().to_vec()
    }
    fn compile_guide(&self, spec: GuideSpec) -> Result<(Constraint, u32), String> {
        let g = self.guidance.ok_or(
            "structured outputs are not available for this model: its vocabulary could not be handed to \
             the grammar engine (see the server log)",
        )?;
        Ok((g.compile(spec)?, g.eos()?))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl AppState {
    /// `Authorization: Bearer KEY` (the scheme in any case, RFC 9110), the key compared in constant time.
    fn check_auth(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if !self.api_keys.required() {
            return Ok(());
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if self.api_keys.accepts(given, same_secret) {
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

/// Two secrets compared in time that depends on neither (their SHA-256 digests, byte by byte, no early exit).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    let (da, db) = (digest(&SHA256, a), digest(&SHA256, b));
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// POST bodies must say they are JSON: a form or text/plain POST (what a browser page may send cross-site
/// without a preflight) is refused.
fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(if ct.is_empty() {
            "no Content-Type".to_owned()
        } else {
            format!("Content-Type `{ct}`")
        }))
    }
}

/// The cheap checks every POST gets on the HTTP worker: authentication and the content type.
fn admit(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    state
        .check_auth(req)
        .and_then(|()| require_json(req))
        .map_err(|e| state.count(e))
}

pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    admit(&state, &req)?;
    let valid = prepared(&state, body, |r: &CompletionRequest, enc, limits| {
        super::validate::validate_completion(r, enc, limits)
    })
    .await?;
    generate(state, &req, valid).await
}

pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    admit(&state, &req)?;
    let valid = prepared(&state, body, |r: &ChatCompletionRequest, enc, limits| {
        super::validate::validate_chat(r, enc, limits)
    })
    .await?;
    generate(state, &req, valid).await
}

/// Parses and validates (templating and tokenizing) a generation request on the preparation pool; every
/// refusal is counted.
async fn prepared<T: DeserializeOwned + 'static>(
    state: &web::Data<AppState>,
    body: Bytes,
    validate: impl FnOnce(&T, &Encoder<'_>, &Limits) -> Result<ValidRequest, ApiError> + Send + 'static,
) -> Result<ValidRequest, ApiError> {
    let st = state.clone();
    state
        .prep
        .run(move || validate(&parse(&body)?, &Encoder::of(&st), &st.limits))
        .await
        .and_then(|r| r)
        .map_err(|e| state.count(e))
}

/// How often a non-streaming request checks that its client is still connected.
const DISCONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Submits a checked request and answers with one JSON body or an SSE stream.
async fn generate(
    state: web::Data<AppState>,
    req: &HttpRequest,
    valid: ValidRequest,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine().map_err(|e| state.count(e))?.clone();
    // what the response needs; the request itself moves to the engine (its constraint is not cloned)
    let info = ReqInfo {
        endpoint: valid.endpoint,
        stream: valid.stream,
        n: valid.n,
        include_usage: valid.include_usage,
    };
    let guide_kind = valid.guide.as_ref().map(|g| g.spec().kind());
    let model = valid.model.clone();
    let mut col = Collector::new(&valid);
    let prompt_tokens = valid.prompt_tokens.len();
    let (id, mut rx) = engine.submit(valid).map_err(|e| {
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
    if let Some(kind) = guide_kind {
        state
            .metrics
            .guided_requests
            .with_label_values(&[kind])
            .inc();
    }
    let prefix = match info.endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let meta = ResponseMeta {
        id: format!("{prefix}-{id}"),
        created: now_unix(),
        model,
        request_id: super::middleware::RequestId::of(req),
    };
    let started = Instant::now();

    if !info.stream {
        // Nobody polls a non-streaming handler's connection until the answer is written: watch it, so a client
        // that leaves stops its generation (as a closed stream does) instead of holding blocks to max_tokens.
        let watch = req.conn_data::<ConnWatch>().cloned();
        let mut poll = actix_web::rt::time::interval(DISCONNECT_POLL);
        let mut full = FullResponse::new(info.n);
        while !col.all_finished() {
            let event = tokio::select! {
                ev = rx.recv() => ev,
                _ = poll.tick(), if watch.is_some() => {
                    if watch.as_ref().is_some_and(ConnWatch::closed) {
                        engine.abort(id, FinishReason::Abort);
                        state.metrics.client_disconnects.inc();
                        tracing::info!(request_id = %meta.id, x_request_id = %meta.request_id, "client disconnected; request aborted");
                        return Err(ApiError::ClientGone);
                    }
                    continue;
                }
            };
            match event {
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
        log_request(&meta, &info, usage, started, &col);
        return Ok(HttpResponse::Ok().json(full.finish_json(info.endpoint, &meta, &col, usage)));
    }

    // Streaming: the stream owns the receiver; when the client disconnects actix drops the stream, the receiver
    // closes, and the engine aborts the request before its next step.
    let state2 = state.clone();
    let mut opening: Vec<String> = Vec::new();
    if info.endpoint == Endpoint::Chat {
        opening.extend((0..info.n).map(|i| sse::event(&role_chunk(&meta, i))));
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
                    if info.include_usage {
                        st.queue
                            .push_back(sse::event(&usage_chunk(info.endpoint, &meta, usage)));
                    }
                    st.queue.push_back(sse::DONE.to_string());
                    log_request(&meta, &info, usage, started, &st.col);
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
                            if let Some(v) = chunk_json(info.endpoint, &meta, &p) {
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

/// The parts of a request its response needs after the request went to the engine.
#[derive(Debug, Clone, Copy)]
struct ReqInfo {
    endpoint: Endpoint,
    stream: bool,
    n: usize,
    include_usage: bool,
}

fn log_request(
    meta: &ResponseMeta,
    valid: &ReqInfo,
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
        x_request_id = %meta.request_id,
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
    admit(&state, &req)?;
    let st = state.clone();
    let out = state
        .prep
        .run(move || tokenize_body(&st, &body))
        .await
        .and_then(|r| r)
        .map_err(|e| state.count(e))?;
    Ok(HttpResponse::Ok().json(out))
}

fn tokenize_body(state: &AppState, body: &Bytes) -> Result<TokenizeResponse, ApiError> {
    {
        let r: TokenizeRequest = parse(body)?;
        if let Some(m) = &r.model
            && m != &state.limits.served_model_name
        {
            return Err(ApiError::ModelNotFound(m.clone()));
        }
        let enc = Encoder::of(state);
        let tokens = match (&r.prompt, &r.messages) {
            (Some(p), None) => {
                super::validate::check_prompt_bytes("prompt", p.len(), &state.limits)?;
                // a raw prompt is the caller's whole prompt: special-token text is parsed
                enc.encode(p, true)
                    .map_err(|e| ApiError::field("prompt", e))?
            }
            (None, Some(m)) => {
                // the tools as a chat request with `tool_choice: auto` shows them
                let tools = super::tools::parse_tools(r.tools.as_ref(), None)?;
                let shown = tools.as_ref().map(|(t, _)| t.as_slice());
                chat_prompt_tokens(m, r.add_generation_prompt.unwrap_or(true), shown, &enc)?
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
    }
}

pub async fn detokenize(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    admit(&state, &req)?;
    let out = (|| {
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

/// Every route and its method.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/completions", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    (llama_contract::paths::HEALTH, "GET"),
    (llama_contract::paths::READY, "GET"),
    (llama_contract::paths::METRICS, "GET"),
];

/// No route matched: a known path with another method is a 405 naming the allowed one, anything else a 404.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(path, _)| *path == req.path())
        .map(|(_, method)| *method)
        .collect();
    if allowed.is_empty() {
        Err(ApiError::NotFound(format!(
            "{} {}",
            req.method(),
            req.path()
        )))
    } else {
        Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            allow: allowed.join(", "),
        })
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(ROUTES[0].0, web::post().to(completions))
        .route(ROUTES[1].0, web::post().to(chat_completions))
        .route(ROUTES[2].0, web::get().to(models))
        .route(ROUTES[3].0, web::post().to(tokenize))
        .route(ROUTES[4].0, web::post().to(detokenize))
        .route(ROUTES[5].0, web::get().to(health))
        .route(ROUTES[6].0, web::get().to(ready))
        .route(ROUTES[7].0, web::get().to(metrics));
}
