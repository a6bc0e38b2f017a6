//! Chat templates: the model's Jinja `tokenizer.chat_template` (or a file given with `--chat-template`),
//! rendered with minijinja (plus Python-compatible string/dict methods such as `.strip()` that HF templates
//! use).

use std::io::{Read, Seek};

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant turn's calls, as templates that take tools read them (Hugging Face's convention:
    /// `[{"type": "function", "function": {"name": ..., "arguments": {...}}}]`, arguments as an object).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// A `tool` turn's answer to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// What a template does with `tools`, found by rendering it once with and once without a probe tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateTools {
    /// The template ignores `tools`: the server describes them in a system turn (Hermes style) and parses
    /// `<tool_call>` blocks.
    Ignored,
    /// The template renders tools and asks for Hermes / Qwen `<tool_call>{json}</tool_call>` blocks.
    Hermes,
    /// The template renders tools and asks for Llama 3.x's JSON reply `{"name": ..., "parameters": {...}}`.
    Llama3Json,
    /// The template renders tools in a form the server cannot parse calls of (requests with tools are refused).
    Unknown,
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
    tools: TemplateTools,
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
        let mut t = Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            tools: TemplateTools::Ignored,
        };
        t.tools = t.probe_tools(source);
        Ok(t)
    }

    /// How this template handles tools.
    pub fn tools(&self) -> TemplateTools {
        self.tools
    }

    fn probe_tools(&self, source: &str) -> TemplateTools {
        let probe = serde_json::json!([{"type": "function", "function": {
            "name": "probe_fn_7f3a", "description": "probe",
            "parameters": {"type": "object", "properties": {}}}}]);
        let msgs = [ChatMessage::new("user", "hello")];
        let with = self.render_with_tools(&msgs, Some(&probe), true);
        let without = self.render(&msgs, true);
        match (with, without) {
            (Ok(a), Ok(b)) if a != b && a.contains("probe_fn_7f3a") => {
                if source.contains("<tool_call>") {
                    TemplateTools::Hermes
                } else if source.contains("<|python_tag|>") || source.contains("ipython") {
                    TemplateTools::Llama3Json
                } else {
                    TemplateTools::Unknown
                }
            }
            _ => TemplateTools::Ignored,
        }
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
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Renders `messages` with `tools` (OpenAI's list of `{"type": "function", "function": {...}}`) in the
    /// template's context, as Hugging Face's `apply_chat_template(tools=...)` does.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatTemplateError::Template(e.to_string()))?;
        let tools = tools.map(minijinja::Value::from_serialize);
        tmpl.render(context! {
            messages => messages,
            tools => tools,
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

    /// A Llama 3.1-style template in miniature: tools as JSON in the first user turn, calls as
    /// `{"name", "parameters"}`, results under the `ipython` header.
    const LLAMA31ISH: &str = r#"{{- bos_token }}{%- if tools is not none %}{%- set first = messages[0]['content'] %}<|start_header_id|>user<|end_header_id|>

Given the following functions, respond with a JSON for a function call with its proper arguments. Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.{% for t in tools %}
{{ t | tojson }}{% endfor %}

{{ first }}<|eot_id|>{%- set messages = messages[1:] %}{%- endif %}{%- for m in messages %}{%- if m.tool_calls is defined %}<|start_header_id|>assistant<|end_header_id|>

{%- for c in m.tool_calls %}{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}{% endfor %}<|eot_id|>{%- elif m.role == "tool" %}<|start_header_id|>ipython<|end_header_id|>

{{ m.content }}<|eot_id|>{%- else %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{{ m.content }}<|eot_id|>{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"#;

    #[test]
    fn what_a_template_does_with_tools_is_found_by_rendering_it() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        assert_eq!(t.tools(), TemplateTools::Ignored);
        let t = ChatTemplate::new(LLAMA31ISH, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(t.tools(), TemplateTools::Llama3Json);
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}})];
        let mut result = ChatMessage::new("tool", "18C");
        result.tool_call_id = Some("call_1".into());
        let out = t
            .render_with_tools(
                &[ChatMessage::new("user", "Weather?"), call, result],
                Some(&tools),
                true,
            )
            .unwrap();
        assert_eq!(
            out.matches("get_weather").count(),
            2,
            "the tool and the call: {out}"
        );
        assert!(
            out.contains(r#"{"name": "get_weather", "parameters": {"city":"Paris"}}"#),
            "{out}"
        );
        assert!(
            out.contains("<|start_header_id|>ipython<|end_header_id|>\n\n18C"),
            "{out}"
        );
        // a Hermes / Qwen-style template: tools rendered, calls asked for in <tool_call> tags
        let hermes = "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> Answer in <tool_call></tool_call> tags.<|im_end|>\n{%- endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}";
        assert_eq!(
            ChatTemplate::new(hermes, "", "").unwrap().tools(),
            TemplateTools::Hermes
        );
        // tools rendered, but no format the server knows: requests with tools are refused
        let other = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}{%- for m in messages %}{{ m.content }}{%- endfor %}";
        assert_eq!(
            ChatTemplate::new(other, "", "").unwrap().tools(),
            TemplateTools::Unknown
        );
    }

    #[test]
    fn a_broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
