//! Chat templates: the model's Jinja `tokenizer.chat_template` (or a file given with `--chat-template`),
//! rendered with minijinja (plus Python-compatible string/dict methods such as `.strip()` that HF templates
//! use).

use std::io::{Read, Seek};

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors compiling or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the model has no chat template (tokenizer.chat_template); pass --chat-template")]
    Missing,
    #[error("chat template: {0}")]
    Template(String),
    #[error("reading chat template {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A compiled chat template and the special-token strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles a template. `bos_token`/`eos_token` are the strings templates see as variables.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(NAME.to_string(), source.to_string())
            .map_err(|e| ChatTemplateError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template embedded in a GGUF file.
    pub fn from_gguf<R: Read + Seek>(f: &GgufFile<R>) -> Result<Self, ChatTemplateError> {
        let source = f
            .get_str("tokenizer.chat_template")
            .map_err(|_| ChatTemplateError::Missing)?;
        let (bos, eos) = special_strings(f);
        Self::new(source, &bos, &eos)
    }

    /// A template read from a file, with the GGUF's BOS/EOS strings.
    pub fn from_file<R: Read + Seek>(
        path: &std::path::Path,
        f: &GgufFile<R>,
    ) -> Result<Self, ChatTemplateError> {
        let source = std::fs::read_to_string(path).map_err(|source| ChatTemplateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (bos, eos) = special_strings(f);
        Self::new(&source, &bos, &eos)
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatTemplateError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ChatTemplateError::Template(e.to_string()))
    }
}

fn special_strings<R: Read + Seek>(f: &GgufFile<R>) -> (String, String) {
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap_or_default();
    let tok = |k: &str| {
        f.get_u64(k)
            .ok()
            .and_then(|i| tokens.get(i as usize).cloned())
            .unwrap_or_default()
    };
    (
        tok("tokenizer.ggml.bos_token_id"),
        tok("tokenizer.ggml.eos_token_id"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_a_default_system_prompt_and_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").expect("compiles");
        let out = t
            .render(&[ChatMessage::new("user", "Hi")], true)
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user'] %}{{ raise_exception('only user') }}{% endif %}[{{ m.content.strip() }}]{% endfor %}",
            "<s>",
            "</s>",
        )
        .expect("compiles");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  x ")], false)
                .expect("renders"),
            "<s>[x]"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], false)
            .expect_err("raises");
        assert!(err.to_string().contains("only user"));
    }

    #[test]
    fn a_broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
