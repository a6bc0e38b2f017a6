//! The GGUF reader on arbitrary bytes: the header, the tensor directory checks, every tensor's data, the
//! model config, the tokenizer and the chat template read from the metadata. Any outcome but a clear
//! `Err` or a well-formed result is a finding: an uncaught panic, an abort, an allocation past the
//! fuzzer's memory limit, or a hang.
#![no_main]

use std::io::Cursor;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use llama_server::chat::ChatTemplate;
use llama_server::gguf::GgufFile;
use llama_server::model::ModelConfig;
use llama_server::tokenizer::Tokenizer;

static QUIET: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // The reader catches candle's header panics on purpose and turns them into named errors; libFuzzer's
    // hook would abort on those. Panics that escape still abort (libfuzzer-sys checks the unwind).
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(mut f) = GgufFile::from_reader(Cursor::new(data)) else {
        return;
    };
    let names: Vec<String> = f.tensor_names().map(str::to_string).collect();
    for name in &names {
        let (dtype, dims) = f.tensor_info(name).expect("a listed tensor has info");
        if let Ok(t) = f.tensor(name) {
            assert_eq!(t.dtype(), dtype, "{name}: type differs from the directory");
            assert_eq!(
                t.shape().dims(),
                dims.as_slice(),
                "{name}: shape differs from the directory"
            );
        }
    }
    if let Ok(c) = ModelConfig::from_gguf(&f) {
        assert!(
            c.vocab_size > 0 && c.n_layers > 0 && c.feed_forward_length > 0,
            "{c:?}"
        );
        assert!(
            c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
            "{c:?}"
        );
        assert!(c.head_dim > 0 && c.head_dim % 2 == 0, "{c:?}");
        assert!(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0, "{c:?}");
        assert!(c.rope_theta.is_finite() && c.rope_theta > 0.0, "{c:?}");
        assert!(
            (c.bos_token_id as usize) < c.vocab_size,
            "BOS outside the vocabulary: {c:?}"
        );
        assert!(
            (c.eos_token_id as usize) < c.vocab_size,
            "EOS outside the vocabulary: {c:?}"
        );
    }
    if let Ok(tok) = Tokenizer::from_gguf(&f) {
        let ids = tok
            .encode("Hello <|im_start|> world", true, true)
            .unwrap_or_default();
        assert!(
            ids.iter().all(|&id| (id as usize) < tok.vocab_size()),
            "id outside the vocabulary"
        );
        let _ = tok.decode(&ids, true);
    }
    let _ = ChatTemplate::from_gguf(&f);
});
