//! The model configuration, resolved from GGUF metadata into plain values (no `Option`s).

use std::io::{Read, Seek};

use crate::gguf::{GgufError, GgufFile};

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's "normal" RoPE, used for `general.architecture = llama`
    /// (the HF→GGUF converter permutes Q/K rows so that this matches HF's rotate-half).
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX style (Qwen2, Phi-3, …).
    NeoX,
}

/// Everything the forward pass needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Hidden size.
    pub embedding_length: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP hidden size.
    pub feed_forward_length: usize,
    /// Context length the model was trained for (the maximum sequence length we serve).
    pub max_context: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE frequency base.
    pub rope_theta: f64,
    /// RoPE convention.
    pub rope_style: RopeStyle,
    /// Beginning-of-sequence token id.
    pub bos_token_id: u32,
    /// End-of-sequence token id.
    pub eos_token_id: u32,
}

impl ModelConfig {
    /// Resolves the configuration from a GGUF header.
    pub fn from_gguf<R: Read + Seek>(f: &GgufFile<R>) -> Result<Self, GgufError> {
        let arch = f.get_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" | "phi3" => RopeStyle::NeoX,
            other => return Err(GgufError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize, GgufError> {
            let v = f.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < (1 << 31))
                .ok_or_else(|| GgufError::BadKey {
                    key: key(k),
                    detail: format!("{v} is out of range"),
                })
        };
        let embedding_length = usize_key("embedding_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = match f.get(&key("attention.head_count_kv")) {
            Ok(_) => usize_key("attention.head_count_kv")?,
            Err(_) => n_heads,
        };
        if !n_heads.is_multiple_of(n_kv_heads) || !embedding_length.is_multiple_of(n_heads) {
            return Err(GgufError::BadKey {
                key: key("attention.head_count_kv"),
                detail: format!(
                    "{n_heads} heads, {n_kv_heads} kv heads, embedding {embedding_length}: not divisible"
                ),
            });
        }
        let head_dim = match f.get(&key("attention.key_length")) {
            Ok(_) => usize_key("attention.key_length")?,
            Err(_) => embedding_length / n_heads,
        };
        if !head_dim.is_multiple_of(2) {
            return Err(GgufError::BadKey {
                key: key("attention.key_length"),
                detail: format!("head dim {head_dim} must be even for RoPE"),
            });
        }
        let vocab_size = match f.tensor_info("token_embd.weight") {
            Ok((_, dims)) => *dims.first().unwrap_or(&0),
            Err(_) => return Err(GgufError::MissingTensor("token_embd.weight".into())),
        };
        let rope_theta = f.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_norm_eps = f.get_f64(&key("attention.layer_norm_rms_epsilon"))?;
        for (k, v, hi) in [
            ("rope.freq_base", rope_theta, f64::MAX),
            ("attention.layer_norm_rms_epsilon", rms_norm_eps, 1.0),
        ] {
            if !(v.is_finite() && v > 0.0 && v < hi) {
                return Err(GgufError::BadKey {
                    key: key(k),
                    detail: format!("must be a finite positive number (below {hi}), got {v}"),
                });
            }
        }
        let token_id = |k: &str, default: u32| -> u32 {
            f.get_u64(k)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < vocab_size)
                .unwrap_or(default)
        };
        Ok(Self {
            vocab_size,
            embedding_length,
            n_layers: usize_key("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            feed_forward_length: usize_key("feed_forward_length")?,
            max_context: usize_key("context_length")?,
            rms_norm_eps,
            rope_theta,
            rope_style,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id", 1),
            eos_token_id: token_id("tokenizer.ggml.eos_token_id", 2),
            architecture: arch,
        })
    }

    /// What one of `size` tensor-parallel ranks computes: `n_heads / size` query heads, `n_kv_heads / size` KV
    /// heads and `feed_forward_length / size` of the MLP (the caller has checked that `size` divides them;
    /// see [`super::check_tensor_parallel`]). Everything else is the whole model's.
    pub fn for_rank(&self, size: usize) -> Self {
        let size = size.max(1);
        Self {
            n_heads: self.n_heads / size,
            n_kv_heads: self.n_kv_heads / size,
            feed_forward_length: self.feed_forward_length / size,
            ..self.clone()
        }
    }

    /// Query width: `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key (and value) width: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
