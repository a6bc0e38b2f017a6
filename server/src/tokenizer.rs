//! Tokenization built from the GGUF's own `tokenizer.ggml.*` metadata (or a `tokenizer.json`), on the
//! `tokenizers` crate.
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE. The pre-tokenizer is the sequence of regex splits
//!   llama.cpp uses for the file's `tokenizer.ggml.pre` (e.g. `smollm` splits digits one by one, `llama-bpe`
//!   groups up to three), followed by the byte-level mapping.
//! - `tokenizer.ggml.model = llama`: SentencePiece-style BPE with byte fallback. GGUF stores scores, not
//!   merges; merges are derived from the scores (a pair merges with the rank of its merged piece's score),
//!   spaces become `▁` and a leading `▁` is added, as llama.cpp does.
//!
//! Control and user-defined tokens are registered as special added tokens so that encoding with
//! `parse_special` recognises them in text (chat templates) and decoding can skip them.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::gguf::{GgufError, GgufFile};

/// Errors building or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported tokenizer model `{0}` (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("tokenizer: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Build(e.to_string())
}

// llama.cpp's token types
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const REGEX_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex splits llama.cpp applies (in order) for a `tokenizer.ggml.pre` value.
pub fn pre_tokenizer_regexes(pre: &str) -> Vec<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "smaug-bpe" => {
            vec![REGEX_LLAMA3]
        }
        "qwen2" | "deepseek-r1-qwen" => vec![REGEX_QWEN2],
        "smollm" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", REGEX_GPT2]
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe" => vec![REGEX_GPT2],
        _ => vec![
            r"[\p{P}\$\+<=>\^~\|]+",
            REGEX_GPT2,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ],
    }
}

/// A tokenizer plus the special ids the engine needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same model without the special added tokens: encodes text in which special-token strings are
    /// plain text.
    raw: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    add_bos: bool,
    eos_token_ids: Vec<u32>,
    special_ids: Vec<u32>,
    /// How vocabulary strings stand for bytes (`None` for a `tokenizer.json`).
    spelling: Option<Spelling>,
}

/// How a GGUF vocabulary's token strings stand for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-level alphabet: each character is one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` the byte NN, the rest UTF-8.
    SentencePiece,
}

/// GPT-2's `bytes_to_unicode` reversed: the byte each character of the byte-level alphabet stands for.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf<R: Read + Seek>(f: &GgufFile<R>) -> Result<Self, TokenizerError> {
        let model = f.get_str("tokenizer.ggml.model")?.to_string();
        let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
        let types = f
            .get_i64_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|_| vec![1; tokens.len()]);
        let id = |k: &str| {
            f.get_u64(k)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let eot = id("tokenizer.ggml.eot_token_id");
        let unk = id("tokenizer.ggml.unknown_token_id");
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let spelling = match model.as_str() {
            "gpt2" => Some(Spelling::ByteLevel),
            "llama" => Some(Spelling::SentencePiece),
            _ => None,
        };
        let (mut inner, default_add_bos) = match model.as_str() {
            "gpt2" => {
                let merges = f.get_str_array("tokenizer.ggml.merges")?;
                let merges = merges
                    .iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| build_err(format!("merge `{m}` has no space")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let pre = f.get_str("tokenizer.ggml.pre").unwrap_or("default");
                // llama.cpp takes a whole pre-token that is itself in the vocabulary without merging
                // for the Llama-3 family
                let ignore_merges = matches!(
                    pre,
                    "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "lfm2"
                );
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(build_err)?;
                let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
                for re in pre_tokenizer_regexes(pre) {
                    let split = Split::new(
                        SplitPattern::Regex(re.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(build_err)?;
                    pres.push(split.into());
                }
                pres.push(ByteLevel::new(false, false, false).into());
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(PreSequence::new(pres)));
                t.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
                (t, false)
            }
            "llama" => {
                let scores = f
                    .get_f32_array("tokenizer.ggml.scores")
                    .unwrap_or_else(|_| vec![0.0; tokens.len()]);
                let merges = spm_merges(&tokens, &scores, &types);
                let mut b = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(u) = unk.and_then(|u| tokens.get(u as usize)) {
                    b = b.unk_token(u.clone());
                }
                let bpe = b.build().map_err(build_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let add_space = f
                    .get_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let mut norms: Vec<NormalizerWrapper> = Vec::new();
                if add_space {
                    norms.push(Prepend::new("▁".into()).into());
                }
                norms.push(Replace::new(" ", "▁").map_err(build_err)?.into());
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)))
                    .map_err(build_err)?;
                let mut decs: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ").map_err(build_err)?.into(),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                if add_space {
                    decs.push(Strip::new(' ', 1, 0).into());
                }
                t.with_decoder(Some(DecoderSequence::new(decs)));
                (t, true)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let mut special_ids = Vec::new();
        let mut added = Vec::new();
        for (i, (tok, ty)) in tokens.iter().zip(types.iter()).enumerate() {
            if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
                special_ids.push(i as u32);
                added.push(AddedToken::from(tok.clone(), true));
            }
        }
        let raw = inner.clone();
        inner.add_special_tokens(added).map_err(build_err)?;
        let add_bos = f
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos);
        let mut eos_token_ids: Vec<u32> = eos.into_iter().chain(eot).collect();
        eos_token_ids.dedup();
        Ok(Self {
            inner,
            raw,
            bos_token_id: bos,
            add_bos,
            eos_token_ids,
            special_ids,
            spelling,
        })
    }

    /// The bytes every token stands for, by id, read off the vocabulary (what a grammar engine needs): byte-level
    /// characters or SentencePiece pieces turned back into bytes; special tokens are `0xFF` followed by their
    /// text (llguidance's marker: no text spells them). `None` for a `tokenizer.json` vocabulary.
    pub fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        let spelling = self.spelling?;
        let alphabet = (spelling == Spelling::ByteLevel).then(byte_level_alphabet);
        let n = self.vocab_size();
        let mut out = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let Some(text) = self.inner.id_to_token(id) else {
                out.push(Vec::new());
                continue;
            };
            if self.is_special(id) {
                out.push([&[0xFF], text.as_bytes()].concat());
                continue;
            }
            let bytes = match (spelling, &alphabet) {
                (Spelling::ByteLevel, Some(a)) => text
                    .chars()
                    .map(|c| a.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| text.as_bytes().to_vec()),
                _ => match text
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => vec![b],
                    None => text.replace('▁', " ").into_bytes(),
                },
            };
            out.push(bytes);
        }
        Some(out)
    }

    /// Loads a HF `tokenizer.json`; BOS/EOS ids are taken from the model's config.
    pub fn from_json_file(
        path: &Path,
        bos_token_id: Option<u32>,
        add_bos: bool,
        eos_token_ids: Vec<u32>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(build_err)?;
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        Ok(Self {
            raw: inner.clone(),
            inner,
            bos_token_id,
            add_bos,
            eos_token_ids,
            special_ids,
            spelling: None,
        })
    }

    /// Encodes text. `add_bos`: prepend BOS if the model asks for it (`tokenizer.ggml.add_bos_token`).
    /// `parse_special`: recognise special-token text such as `<|im_start|>` (true for rendered chat
    /// templates; false for untrusted raw text).
    pub fn encode(
        &self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_bos && self.add_bos {
            ids.extend(self.bos_token_id);
        }
        let t = if parse_special {
            &self.inner
        } else {
            &self.raw
        };
        let enc = t.encode_fast(text, false).map_err(build_err)?;
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text; `skip_special` drops control tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(build_err)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The text of one token as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token's text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// BOS id, if the vocabulary has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Whether the model expects BOS at the start of a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation (EOS and, where the model has one, end-of-turn).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether `id` is a special (control / user-defined) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// SentencePiece vocabularies store scores, not merges: derive merges so that BPE reproduces the
/// score-greedy merging (a pair `(a, b)` whose concatenation is a normal token ranks by that token's score).
fn spm_merges(tokens: &[String], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i).copied().unwrap_or(1) != 1 {
            continue; // only normal tokens are reachable by merging
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(split);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                let s = scores.get(i).copied().unwrap_or(0.0);
                merges.push((s, i, ia, ib));
            }
        }
    }
    // higher score first; ties by the ids of the pieces (as SentencePiece's extractor does)
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.2.cmp(&y.2)).then(x.3.cmp(&y.3)));
    merges
        .into_iter()
        .map(|(_, _, a, b)| (tokens[a].clone(), tokens[b].clone()))
        .collect()
}

/// Streaming detokenizer: feed ids one at a time, get the text they complete. Never emits a partial
/// UTF-8 sequence (a multi-byte character split across tokens is held back until complete), and handles
/// SentencePiece's leading-space stripping by decoding with a few tokens of left context.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    /// A decoder; `skip_special` drops control tokens from the output.
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            ..Self::default()
        }
    }

    /// Adds one token and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end of generation. The bytes of a character cut off by the end
    /// (generation stopped inside a multi-byte character) are dropped rather than sent as U+FFFD.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        let rest = full.get(prefix.len()..).unwrap_or_default();
        Ok(rest.trim_end_matches('\u{FFFD}').to_string())
    }
}
