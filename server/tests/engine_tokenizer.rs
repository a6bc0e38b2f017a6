//! The tokenizer against llama.cpp's own vocabulary test vectors (gpt-2, llama-bpe, llama-spm), the SmolLM2
//! tokenizer against known ids, round trips, and the streaming detokenizer.

mod engine_common;

use std::path::{Path, PathBuf};

use llama_server::gguf::GgufFile;
use llama_server::tokenizer::{IncrementalDecoder, Tokenizer};

fn data_dir() -> PathBuf {
    engine_common::package_dir().join("tests/data/llama.cpp-vocab")
}

fn sdist_models() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(engine_common::repo_root().join("scripts/reference/fetch-llamacpp-sdist.sh"))
        .output()
        .expect("fetch-llamacpp-sdist.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("models")
}

fn load(path: &Path) -> Tokenizer {
    let f = GgufFile::open(path).expect("open vocab");
    Tokenizer::from_gguf(&f).expect("tokenizer")
}

fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(data_dir().join(format!("{name}.gguf.inp"))).expect("inp");
    let out = std::fs::read_to_string(data_dir().join(format!("{name}.gguf.out"))).expect("out");
    // as llama.cpp's test-tokenizer-0 reads them: the file ends with a separator
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(texts.len(), ids.len(), "{name}: inp/out mismatch");
    texts.into_iter().map(String::from).zip(ids).collect()
}

fn check_vectors(name: &str, vocab: &Path) {
    let tok = load(vocab);
    let mut failures = Vec::new();
    for (text, want) in cases(name) {
        let got = tok.encode(&text, false, false).expect("encode");
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gpt2_vocab_matches_llama_cpp_test_vectors() {
    check_vectors(
        "ggml-vocab-gpt-2",
        &data_dir().join("ggml-vocab-gpt-2.gguf"),
    );
}

#[test]
fn llama_bpe_vocab_matches_llama_cpp_test_vectors() {
    check_vectors(
        "ggml-vocab-llama-bpe",
        &sdist_models().join("ggml-vocab-llama-bpe.gguf"),
    );
}

#[test]
fn llama_spm_vocab_matches_llama_cpp_test_vectors() {
    check_vectors(
        "ggml-vocab-llama-spm",
        &data_dir().join("ggml-vocab-llama-spm.gguf"),
    );
}

/// The vocabulary handed to llguidance (structured outputs): for every test vector, the bytes it gives the
/// tokens our tokenizer encodes the text to are the text itself (SentencePiece: after its space prefix), so a
/// grammar over text bytes constrains exactly the tokens that spell them.
#[test]
fn the_vocabulary_handed_to_the_grammar_engine_spells_the_encoded_text() {
    use llama_server::guided::Guidance;
    for (name, path) in [
        ("ggml-vocab-gpt-2", data_dir().join("ggml-vocab-gpt-2.gguf")),
        (
            "ggml-vocab-llama-spm",
            data_dir().join("ggml-vocab-llama-spm.gguf"),
        ),
        // Llama 3's vocabulary (byte-level, 128k tokens, 256 reserved specials), from llama.cpp's sdist
        (
            "ggml-vocab-llama-bpe",
            sdist_models().join("ggml-vocab-llama-bpe.gguf"),
        ),
    ] {
        let tok = load(&path);
        let g = Guidance::new(&tok, Default::default()).expect("guidance");
        let mut checked = 0;
        for (text, _) in cases(name) {
            let ids = tok.encode(&text, false, false).expect("encode");
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| g.token_bytes(id).expect("token bytes"))
                .collect();
            let spaced = [b" ".as_slice(), text.as_bytes()].concat();
            assert!(
                bytes == text.as_bytes() || (name.ends_with("spm") && bytes == spaced),
                "{name}: {text:?} spelled {:?}",
                String::from_utf8_lossy(&bytes)
            );
            checked += 1;
        }
        assert!(checked > 20, "{name}: only {checked} vectors");
        // the bytes read off the GGUF vocabulary are llguidance's own reading of the tokenizer, token by token
        let ours = tok.token_bytes().expect("a GGUF vocabulary");
        let reference = Guidance::token_bytes_via_json(&tok).expect("llguidance's reading");
        let mut compared = 0;
        for (id, (a, b)) in ours.iter().zip(&reference).enumerate() {
            if tok.is_special(id as u32) || b.is_empty() {
                continue; // marked specially by each; unnamed ids are filled in later
            }
            assert_eq!(a, b, "{name}: token {id} {:?}", tok.token_text(id as u32));
            compared += 1;
        }
        assert!(
            compared > tok.vocab_size() * 9 / 10,
            "{name}: compared only {compared}"
        );
        // special tokens are marked, never spelled by text
        for id in 0..tok.vocab_size() as u32 {
            if tok.is_special(id) {
                assert_eq!(
                    g.token_bytes(id).expect("token bytes").first(),
                    Some(&0xFF),
                    "{name}: special {id}"
                );
            }
        }
    }
}

/// The grammar of a `required` / named tool call, compiled by llguidance against a real vocabulary: the tokens
/// of a well-formed call pass its masks one by one and the grammar may then end; a call to a function not
/// allowed, or with arguments against the schema, meets a masked token.
#[test]
fn the_tool_call_grammar_admits_valid_calls_and_masks_invalid_ones() {
    use llama_server::api::tools::{ToolChoice, ToolFormat, call_grammar, parse_tools};
    use llama_server::guided::{Guidance, GuideSpec};
    let tok = load(&data_dir().join("ggml-vocab-gpt-2.gguf"));
    let g = Guidance::new(&tok, Default::default()).expect("guidance");
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time"}}
    ]);
    let (tools, _) = parse_tools(Some(&tools), None)
        .expect("tools")
        .expect("some");
    // whether `text` passes the masks of the grammar token by token, and whether it may end there
    let walk_in = |format: ToolFormat, choice: &ToolChoice, parallel: bool, ids: &[u32]| {
        let grammar = call_grammar(&tools, choice, parallel, format).expect("grammar");
        let mut c = g.compile(GuideSpec::Lark(grammar)).expect("compiles");
        let vocab = tok.vocab_size();
        for &id in ids {
            let mut logits = vec![0f32; vocab];
            if c.mask(&mut logits).is_err() || logits[id as usize] == f32::NEG_INFINITY {
                return (false, false);
            }
            c.consume(id).expect("consume");
        }
        let mut logits = vec![0f32; vocab];
        let ends = c.mask(&mut logits).is_ok()
            && logits[g.eos().expect("eos") as usize] != f32::NEG_INFINITY;
        (true, ends)
    };
    let walk_ids = |choice: &ToolChoice, parallel: bool, ids: &[u32]| {
        walk_in(ToolFormat::Hermes, choice, parallel, ids)
    };
    let walk = |choice: &ToolChoice, parallel: bool, text: &str| {
        walk_ids(
            choice,
            parallel,
            &tok.encode(text, false, false).expect("encode"),
        )
    };
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>";
    assert_eq!(walk(&ToolChoice::Required, true, call), (true, true));
    let two = format!(
        "{call}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}\n</tool_call>"
    );
    assert_eq!(walk(&ToolChoice::Required, true, &two), (true, true));
    assert!(
        !walk(&ToolChoice::Required, false, &two).0,
        "one call only without parallel_tool_calls"
    );
    assert!(
        !walk(&ToolChoice::Named("get_time".into()), true, call).0,
        "not the named function"
    );
    let bad_args = call.replace("\"days\": 3", "\"days\": 9");
    assert!(
        !walk(&ToolChoice::Required, true, &bad_args).0,
        "days above its maximum"
    );
    let ids = tok.encode(call, false, false).expect("encode");
    assert_eq!(
        walk_ids(&ToolChoice::Required, true, &ids[..ids.len() - 3]),
        (true, false),
        "a call cut short may not end"
    );
    // Llama 3.x: the reply is the call's JSON alone, arguments under "parameters", one call
    let llama = |choice: &ToolChoice, text: &str| {
        walk_in(
            ToolFormat::Llama3Json,
            choice,
            true,
            &tok.encode(text, false, false).expect("encode"),
        )
    };
    let json_call =
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 3}}";
    assert_eq!(llama(&ToolChoice::Required, json_call), (true, true));
    assert!(
        !llama(&ToolChoice::Required, call).0,
        "no tags in the Llama 3 format"
    );
    assert!(
        !llama(
            &ToolChoice::Required,
            &json_call.replace("parameters", "arguments")
        )
        .0,
        "Llama 3 writes parameters"
    );
    assert!(
        !llama(&ToolChoice::Named("get_time".into()), json_call).0,
        "not the named function"
    );
}

#[test]
fn every_test_vector_round_trips_through_decode() {
    for name in ["ggml-vocab-gpt-2", "ggml-vocab-llama-spm"] {
        let tok = load(&data_dir().join(format!("{name}.gguf")));
        for (text, _) in cases(name) {
            let ids = tok.encode(&text, false, false).expect("encode");
            let back = tok.decode(&ids, false).expect("decode");
            // SentencePiece adds one leading space that decoding strips again
            assert_eq!(back, text, "{name}");
        }
    }
}

fn smollm2() -> Tokenizer {
    load(&engine_common::smollm2())
}

#[test]
fn smollm2_tokenizes_like_llama_cpp() {
    let tok = smollm2();
    assert_eq!(
        tok.encode("Once upon a time", true, false).expect("encode"),
        vec![6403, 1980, 253, 655]
    );
    assert_eq!(tok.bos_token_id(), Some(1));
    assert!(!tok.add_bos());
    assert_eq!(tok.eos_token_ids(), &[2]);
    // digits are split one by one (pre-tokenizer `smollm`)
    let ids = tok.encode("12345", false, false).expect("encode");
    assert_eq!(ids.len(), 5);
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let tok = smollm2();
    let parsed = tok.encode("<|im_start|>user", false, true).expect("encode");
    assert_eq!(parsed[0], 1);
    let raw = tok
        .encode("<|im_start|>user", false, false)
        .expect("encode");
    assert!(!raw.contains(&1));
    assert!(tok.is_special(1));
}

#[test]
fn incremental_decoding_equals_full_decoding_even_across_split_characters() {
    let tok = smollm2();
    let text = "Héllo wörld — 你好, 🦙 llamas! Ünïcödé 12345 ...";
    let ids = tok.encode(text, false, false).expect("encode");
    let mut dec = IncrementalDecoder::new(false);
    let mut streamed = String::new();
    for &id in &ids {
        let piece = dec.push(&tok, id).expect("push");
        assert!(!piece.contains('\u{FFFD}'), "partial character emitted");
        streamed.push_str(&piece);
    }
    streamed.push_str(&dec.flush(&tok).expect("flush"));
    assert_eq!(streamed, text);
}

#[test]
fn generation_cut_inside_a_character_drops_its_bytes_instead_of_sending_a_replacement_char() {
    let tok = smollm2();
    let ids = tok.encode("ok 🦙", false, false).expect("encode");
    let whole = ids.len();
    // stop one token before the end: the llama's last byte(s) never arrive
    let mut dec = IncrementalDecoder::new(false);
    let mut text = String::new();
    for &id in &ids[..whole - 1] {
        text.push_str(&dec.push(&tok, id).expect("push"));
    }
    text.push_str(&dec.flush(&tok).expect("flush"));
    assert!(!text.contains('\u{FFFD}'), "{text:?}");
    assert_eq!(text, "ok ");
}

#[test]
fn incremental_decoding_keeps_spm_spaces() {
    let tok = load(&data_dir().join("ggml-vocab-llama-spm.gguf"));
    let text = "Hello world, this is  a test 🦙";
    let ids = tok.encode(text, false, false).expect("encode");
    let mut dec = IncrementalDecoder::new(false);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&dec.push(&tok, id).expect("push"));
    }
    streamed.push_str(&dec.flush(&tok).expect("flush"));
    assert_eq!(streamed, text);
}
