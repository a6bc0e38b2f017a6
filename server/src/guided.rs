//! Constrained decoding with [`llguidance`]: a request's JSON schema, regex, choice list or Lark grammar
//! becomes a per-sequence [`Constraint`] whose token mask is applied to the logits before sampling (before
//! penalties, temperature and truncation), so a constrained choice can only produce text the grammar
//! accepts, and ends (EOS) only where the grammar may end.
//!
//! The tokenizer's vocabulary is handed to llguidance once at load ([`Guidance::new`]): each token's bytes
//! come from the tokenizer's own description (byte-level BPE or SentencePiece with byte fallback), special
//! tokens marked so that grammar text never produces them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GuideSpec {
    /// `response_format: {type: json_object}`: any JSON object.
    JsonObject,
    /// `response_format: {type: json_schema, ...}` or `guided_json`: JSON valid against the schema.
    JsonSchema(Value),
    /// `guided_regex`: text matching the regular expression (whole output).
    Regex(String),
    /// `guided_choice`: exactly one of these strings.
    Choice(Vec<String>),
    /// `guided_grammar`: a Lark grammar (llguidance's dialect).
    Lark(String),
    /// A `required` or named `tool_choice`: the call grammar (Lark) of `api::tools::call_grammar`.
    ToolCall(String),
}

impl GuideSpec {
    /// A short name (metrics label, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonObject => "json_object",
            Self::JsonSchema(_) => "json_schema",
            Self::Regex(_) => "regex",
            Self::Choice(_) => "choice",
            Self::Lark(_) => "grammar",
            Self::ToolCall(_) => "tool_call",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))?)
            }
            Self::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact(s.clone())?),
            Self::Regex(r) => TopLevelGrammar::from_regex(r),
            Self::Choice(c) => {
                // Lark string literals take JSON's escapes
                let alts = c
                    .iter()
                    .map(|s| serde_json::to_string(s).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            Self::Lark(g) | Self::ToolCall(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// JSON output as OpenAI's structured outputs write it: one space after `:` and `,`, no other whitespace.
/// Free whitespace lets a small model loop on newlines until `max_tokens` (seen on SmolLM2: `[` then 390
/// newlines); a schema that says otherwise (llguidance's `x-guidance` options) keeps its own choice.
fn compact(schema: Value) -> Result<Value, String> {
    let mut schema = match schema {
        Value::Bool(true) => serde_json::json!({}),
        Value::Bool(false) => return Err("the schema `false` admits no value".into()),
        Value::Object(m) => Value::Object(m),
        other => {
            return Err(format!(
                "a JSON schema must be an object or a boolean, got {other}"
            ));
        }
    };
    if let Some(m) = schema.as_object_mut()
        && !m.contains_key("x-guidance")
    {
        m.insert(
            "x-guidance".into(),
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    Ok(schema)
}

/// Bounds on what one request's grammar may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuideLimits {
    /// Largest schema / grammar / regex text, in bytes.
    pub max_spec_bytes: usize,
    /// Longest a grammar may take to compile (checked after llguidance's own fuel limits, which stop
    /// pathological grammars early).
    pub max_compile: Duration,
}

impl Default for GuideLimits {
    fn default() -> Self {
        Self {
            max_spec_bytes: 64 * 1024,
            max_compile: Duration::from_secs(2),
        }
    }
}

/// The model's vocabulary as llguidance needs it, built once (on the first constrained request when made
/// with [`Guidance::lazy`], so a server that never sees one never pays its memory); compiles request grammars.
pub struct Guidance {
    tokenizer: Arc<Tokenizer>,
    limits: GuideLimits,
    built: std::sync::OnceLock<Result<Built, String>>,
}

struct Built {
    factory: ParserFactory,
    eos: u32,
}

impl std::fmt::Debug for Guidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guidance")
            .field("built", &self.built.get().map(Result::is_ok))
            .field("limits", &self.limits)
            .finish()
    }
}

/// The tokenizer as llguidance's tokenizer environment.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

impl Guidance {
    /// Hands `tokenizer`'s vocabulary to llguidance. Fails for vocabularies whose token bytes cannot be
    /// derived (neither byte-level BPE nor byte-fallback SentencePiece).
    pub fn new(tokenizer: &Tokenizer, limits: GuideLimits) -> Result<Self, String> {
        let g = Self::lazy(Arc::new(tokenizer.clone()), limits);
        g.built()?;
        Ok(g)
    }

    /// A guidance that hands the vocabulary over on first use.
    pub fn lazy(tokenizer: Arc<Tokenizer>, limits: GuideLimits) -> Self {
        Self {
            tokenizer,
            limits,
            built: std::sync::OnceLock::new(),
        }
    }

    fn built(&self) -> Result<&Built, String> {
        self.built
            .get_or_init(|| {
                let t0 = Instant::now();
                let b = Self::build(&self.tokenizer);
                match &b {
                    Ok(_) => tracing::info!(
                        ms = t0.elapsed().as_millis() as u64,
                        "vocabulary handed to llguidance (structured outputs available)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "structured outputs unavailable"),
                }
                b
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Each token's bytes through llguidance's reading of the tokenizer's JSON description (the way for a
    /// `tokenizer.json`; also the reference the GGUF reading is tested against). The JSON round trip costs
    /// tens of MB for a moment, which a GGUF vocabulary avoids ([`Tokenizer::token_bytes`]).
    pub fn token_bytes_via_json(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>, String> {
        let json: Value = serde_json::from_str(
            &tokenizer
                .inner()
                .to_string(false)
                .map_err(|e| format!("tokenizer as JSON: {e}"))?,
        )
        .map_err(|e| format!("tokenizer as JSON: {e}"))?;
        // llguidance asserts on some malformed vocabularies; a panic here must not take the server down
        std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| "the vocabulary's token bytes cannot be derived".to_string())?
            .map_err(|e| format!("the vocabulary's token bytes cannot be derived: {e}"))
    }

    fn build(tokenizer: &Arc<Tokenizer>) -> Result<Built, String> {
        let words = match tokenizer.token_bytes() {
            Some(w) => w,
            None => Self::token_bytes_via_json(tokenizer)?,
        };
        let n = tokenizer.vocab_size().max(words.len());
        let mut words = words;
        words.resize(n, Vec::new());
        for (id, w) in words.iter_mut().enumerate() {
            if w.is_empty() {
                // an id the vocabulary leaves unnamed (duplicate token text): never allowed by a grammar
                *w = format!("\u{ff}[{id}]").into_bytes();
                w[0] = TokTrie::SPECIAL_TOKEN_MARKER;
            }
        }
        let eos = *tokenizer
            .eos_token_ids()
            .first()
            .ok_or("the vocabulary has no end-of-sequence token")?;
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos_token_id();
        let env: TokEnv = Arc::new(Env {
            trie: TokTrie::from(&info, &words),
            tokenizer: Arc::clone(tokenizer),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits::default();
        Ok(Built { factory, eos })
    }

    /// The bytes llguidance takes token `id` to stand for (special tokens start with 0xFF); an error where
    /// the vocabulary could not be handed to it.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, String> {
        self.built()
            .map(|b| b.factory.tok_env().tok_trie().token(id).to_vec())
    }

    /// The token a finished grammar allows (added to the request's stop tokens); an error as
    /// [`Guidance::token_bytes`].
    pub fn eos(&self) -> Result<u32, String> {
        self.built().map(|b| b.eos)
    }

    /// Compiles `spec` for one request; the error names what is wrong with it (for a 400).
    pub fn compile(&self, spec: GuideSpec) -> Result<Constraint, String> {
        let bytes = match &spec {
            GuideSpec::JsonObject => 0,
            GuideSpec::JsonSchema(v) => v.to_string().len(),
            GuideSpec::Regex(r) | GuideSpec::Lark(r) | GuideSpec::ToolCall(r) => r.len(),
            GuideSpec::Choice(c) => c.iter().map(String::len).sum(),
        };
        if bytes > self.limits.max_spec_bytes {
            return Err(format!(
                "the {} is {bytes} bytes; this server takes at most {}",
                spec.kind(),
                self.limits.max_spec_bytes
            ));
        }
        if let GuideSpec::Choice(c) = &spec
            && c.is_empty()
        {
            return Err("guided_choice must list at least one string".into());
        }
        let built = self.built().map_err(|e| {
            format!("structured outputs are not available for this model's vocabulary: {e}")
        })?;
        let started = Instant::now();
        let grammar = spec.grammar()?;
        let parser = built
            .factory
            .create_parser(grammar)
            .map_err(|e| format!("invalid {}: {e}", spec.kind()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("invalid {}: {e}", spec.kind()));
        }
        // the first mask is where many grammar errors (and most of the cost) show up
        let first = matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("invalid {}: {e}", spec.kind()))?;
        let took = started.elapsed();
        if took > self.limits.max_compile {
            return Err(format!(
                "the {} took {} ms to compile; this server allows {} ms",
                spec.kind(),
                took.as_millis(),
                self.limits.max_compile.as_millis()
            ));
        }
        Ok(Constraint {
            spec: Arc::new(spec),
            matcher,
            next_mask: Some(Ok(first)),
            mask_time: None,
            vocab: built.factory.tok_env().tok_trie().vocab_size(),
        })
    }
}

/// One sequence's grammar state. Cloning deep-copies the parser (each choice of `n > 1` has its own).
pub struct Constraint {
    spec: Arc<GuideSpec>,
    matcher: Matcher,
    /// The mask for the next token (or why there is none) when already computed.
    next_mask: Option<Result<llguidance::toktrie::SimpleVob, String>>,
    mask_time: Option<Duration>,
    vocab: usize,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self {
            spec: Arc::clone(&self.spec),
            matcher: self.matcher.deep_clone(),
            next_mask: self.next_mask.clone(),
            mask_time: None,
            vocab: self.vocab,
        }
    }
}

impl PartialEq for Constraint {
    /// Same request grammar (the parser state is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("kind", &self.spec.kind())
            .finish()
    }
}

impl Constraint {
    /// What the request asked for.
    pub fn spec(&self) -> &GuideSpec {
        &self.spec
    }

    /// Computes the mask for the next token now, if not yet done (the engine calls this on a helper
    /// thread while the model's forward pass runs, so that [`Constraint::mask`] only applies it).
    pub fn prepare(&mut self) {
        if self.next_mask.is_none() {
            let t0 = Instant::now();
            self.next_mask = Some(
                self.matcher
                    .compute_mask_or_eos()
                    .map_err(|e| e.to_string()),
            );
            self.mask_time = Some(t0.elapsed());
        }
    }

    /// How long the last mask took to compute, once (for the metrics).
    pub fn take_mask_time(&mut self) -> Option<Duration> {
        self.mask_time.take()
    }

    /// Sets every logit the grammar does not allow next to −∞ (ids past the vocabulary included).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.prepare();
        let mask = self
            .next_mask
            .take()
            .unwrap_or_else(|| Err("no mask".into()))?;
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            if id < self.vocab && mask.is_allowed(id as TokenId) {
                any |= *l != f32::NEG_INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err("the grammar allows no token here".into());
        }
        Ok(())
    }

    /// Advances the grammar past the sampled token.
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.next_mask = None;
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the grammar rejected token {token}: {e}"))
    }
}
