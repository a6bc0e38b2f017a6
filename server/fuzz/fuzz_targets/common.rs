//! The real tokenizer and chat template of the model in `LLAMA_OP_MODEL` (SmolLM2 in `scripts/fuzz.sh`),
//! loaded once per fuzzing process.
#![allow(dead_code)]

use std::sync::OnceLock;

use llama_server::chat::ChatTemplate;
use llama_server::gguf::GgufFile;
use llama_server::guided::Guidance;
use llama_server::tokenizer::Tokenizer;

pub struct Model {
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// The vocabulary handed to llguidance: fuzzed requests' schemas, regexes and grammars compile.
    pub guidance: Guidance,
}

pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = std::env::var("LLAMA_OP_MODEL")
            .expect("LLAMA_OP_MODEL must name a GGUF file whose tokenizer the target uses");
        let f = GgufFile::open(path.as_ref()).expect("open LLAMA_OP_MODEL");
        let tokenizer = Tokenizer::from_gguf(&f).expect("tokenizer");
        Model {
            guidance: Guidance::new(&tokenizer, Default::default()).expect("guidance"),
            tokenizer,
            chat_template: ChatTemplate::from_gguf(&f).expect("chat template"),
        }
    })
}
