//! Tool calling, the parts that do not depend on the engine: the request's `tools` / `tool_choice` checked,
//! the Hermes-style instructions for templates that do not take tools themselves, the grammar that makes a
//! `required` or named call well formed (each call's `arguments` valid against its function's schema), and
//! the parser that finds calls in generated text.
//!
//! Output format (Hermes / Qwen / SmolLM-style, also what many Llama fine-tunes emit):
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! Llama 3.x's JSON form (`{"name": ..., "parameters": {...}}` as the whole reply) is parsed too.

use serde_json::{Value, json};

use super::error::ApiError;
use super::validate::ChatTurn;

/// How calls are written in the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks (Hermes, Qwen, and our own
    /// instructions for templates that do not render tools).
    Hermes,
    /// Llama 3.x: the whole reply is `{"name": ..., "parameters": {...}}`.
    Llama3Json,
}

/// The tools a request shows the model, and how its calls will be written.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub tools: Vec<Tool>,
    pub format: ToolFormat,
}

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (`{"type": "object"}` when the request gives none).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool (the tools are not shown to the model).
    None,
    /// The model decides.
    Auto,
    /// At least one call, constrained.
    Required,
    /// Exactly this function, constrained.
    Named(String),
}

/// The most tools one request may declare.
pub const MAX_TOOLS: usize = 128;

/// Checks `tools` and `tool_choice`; `None` when the request declares no tools (a `tool_choice` without
/// tools is refused unless it is `none`).
pub fn parse_tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<Option<(Vec<Tool>, ToolChoice)>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => return Err(ApiError::field("tools", "tools must be an array")),
    };
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!(
                        "tool_choice must be none, auto, required or a function, got `{other}`"
                    ),
                ));
            }
        }),
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::field(
                        "tool_choice",
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            Some(ToolChoice::Named(name.to_string()))
        }
    };
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return match choice {
            None | Some(ToolChoice::None) => Ok(None),
            Some(_) => Err(ApiError::field(
                "tool_choice",
                "tool_choice needs a non-empty tools array",
            )),
        };
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::field(
            "tools",
            format!("at most {MAX_TOOLS} tools, got {}", list.len()),
        ));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::field(
                param,
                "each tool must have type \"function\"",
            ));
        }
        let f = t
            .get("function")
            .ok_or_else(|| ApiError::field(param.clone(), "each tool needs a function object"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
            .ok_or_else(|| {
                ApiError::field(
                    format!("{param}.function.name"),
                    "function names are 1-64 characters of a-z, A-Z, 0-9, _ and -",
                )
            })?;
        if out.iter().any(|o| o.name == name) {
            return Err(ApiError::field(
                format!("{param}.function.name"),
                format!("function `{name}` is declared twice"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => {
                return Err(ApiError::field(
                    format!("{param}.function.parameters"),
                    "parameters must be a JSON schema object",
                ));
            }
        };
        out.push(Tool {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters,
        });
    }
    let choice = choice.unwrap_or(ToolChoice::Auto);
    if let ToolChoice::Named(n) = &choice
        && !out.iter().any(|t| &t.name == n)
    {
        return Err(ApiError::field(
            "tool_choice",
            format!("tool_choice names `{n}`, which is not in tools"),
        ));
    }
    Ok(Some((out, choice)))
}

/// Hermes-style instructions that describe the tools, for chat templates that do not render tools.
pub fn system_prompt(tools: &[Tool]) -> String {
    let sigs: Vec<String> = tools
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters,
            }})
            .to_string()
        })
        .collect();
    format!(
        "You are a function calling AI model. You are provided with function signatures within <tools></tools> \
         XML tags. You may call one or more functions to assist with the user query. Don't make assumptions \
         about what values to plug into functions. Here are the available tools: <tools>\n{}\n</tools>\nFor \
         each function call return a JSON object with the function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}}\n</tool_call>",
        sigs.join("\n")
    )
}

/// The turns for a template that does not render tools: the tools described in the system turn, earlier
/// calls written back as `<tool_call>` blocks, and `tool` results as user turns in `<tool_response>` tags
/// (consecutive results in one turn), as Hermes-style models were trained.
pub fn hermes_turns(turns: Vec<ChatTurn>, shown: Option<&[Tool]>) -> Vec<ChatTurn> {
    let mut out: Vec<ChatTurn> = Vec::with_capacity(turns.len() + 1);
    let mut last_was_tool = false;
    for mut t in turns {
        if t.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", t.content);
            match out.last_mut() {
                Some(prev) if last_was_tool => {
                    prev.content.push('\n');
                    prev.content.push_str(&block);
                }
                _ => out.push(ChatTurn {
                    role: "user".into(),
                    content: block,
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                }),
            }
            last_was_tool = true;
            continue;
        }
        last_was_tool = false;
        for call in std::mem::take(&mut t.tool_calls) {
            let f = &call["function"];
            let block = format!(
                "<tool_call>\n{}\n</tool_call>",
                spaced_json(&json!({"name": f["name"], "arguments": f["arguments"]}))
            );
            if !t.content.is_empty() {
                t.content.push('\n');
            }
            t.content.push_str(&block);
        }
        out.push(t);
    }
    if let Some(tools) = shown {
        let prompt = system_prompt(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" || first.role == "developer" => {
                first.content = format!("{}\n\n{prompt}", first.content);
            }
            _ => out.insert(
                0,
                ChatTurn {
                    role: "system".into(),
                    content: prompt,
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                },
            ),
        }
    }
    out
}

/// JSON on one line with a space after `:` and `,`, as the call grammar has the model write it (so earlier
/// calls in the prompt look like the model's own).
pub fn spaced_json(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(v, &mut ser).expect("a JSON value serializes");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// The request's tools as templates see them (OpenAI's list form).
pub fn tools_json(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect(),
    )
}

/// A Lark grammar (llguidance's dialect) for the reply of a `required` or named `tool_choice`: one call
/// (or several when `parallel` and the format has a way to write them), each valid against its function's
/// schema. `None` for `auto` and `none` (the reply is free).
pub fn call_grammar(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    format: ToolFormat,
) -> Option<String> {
    let allowed: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Named(n) => tools.iter().filter(|t| &t.name == n).collect(),
    };
    let args = match format {
        ToolFormat::Hermes => "arguments",
        ToolFormat::Llama3Json => "parameters",
    };
    let alternatives: Vec<Value> = allowed
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, args: t.parameters},
                "required": ["name", args],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = json!({
        "anyOf": alternatives,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
    });
    if format == ToolFormat::Llama3Json {
        // one call is the whole reply
        return Some(format!("start: body\nbody: %json {schema}\n"));
    }
    let many = if parallel && !matches!(choice, ToolChoice::Named(_)) {
        " (\"\\n\" call)*"
    } else {
        ""
    };
    Some(format!(
        "start: call{many}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
    ))
}

/// Follows one choice's text as it is generated: passes on what cannot be part of a call, holds back what may
/// be (from a `<tool_call>` tag, or a reply that opens with `{` in the Llama 3 format, including a possible
/// tag's first bytes at the end of a piece), and at the end turns what it held into calls or gives it back as
/// text when it is none. Streamed and whole responses go through it alike, so they agree.
#[derive(Debug)]
pub struct CallCatcher {
    format: ToolFormat,
    /// Not yet passed on: a tag's possible beginning, or (once `holding`) everything from the call on.
    held: String,
    holding: bool,
    /// Llama 3 format: the reply's first visible character has been seen.
    decided: bool,
}

const TAG: &str = "<tool_call>";

impl CallCatcher {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            held: String::new(),
            holding: false,
            decided: false,
        }
    }

    /// The part of `text` (following what came before) that is plain content for sure.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.holding {
            return String::new();
        }
        match self.format {
            ToolFormat::Hermes => {
                if let Some(at) = self.held.find(TAG) {
                    self.holding = true;
                    let content = self.held[..at].to_string();
                    self.held.drain(..at);
                    return content;
                }
                // keep the longest end of the text that could still grow into the tag
                let keep = (1..TAG.len())
                    .rev()
                    .find(|&k| {
                        self.held.len() >= k
                            && self.held.is_char_boundary(self.held.len() - k)
                            && TAG.starts_with(&self.held[self.held.len() - k..])
                    })
                    .unwrap_or(0);
                let cut = self.held.len() - keep;
                let content = self.held[..cut].to_string();
                self.held.drain(..cut);
                content
            }
            ToolFormat::Llama3Json => {
                if self.decided {
                    return std::mem::take(&mut self.held);
                }
                match self.held.trim_start().chars().next() {
                    None => String::new(), // only whitespace so far
                    Some('{') => {
                        self.holding = true;
                        String::new()
                    }
                    Some(_) => {
                        self.decided = true;
                        std::mem::take(&mut self.held)
                    }
                }
            }
        }
    }

    /// At the end of the choice: the rest of the content, and the calls (when what was held parses as calls
    /// of known functions; otherwise it is content).
    pub fn finish(&mut self, tools: &[Tool]) -> (String, Vec<ToolCall>) {
        let held = std::mem::take(&mut self.held);
        if !self.holding {
            return (held, Vec::new());
        }
        match parse_calls(&held, tools) {
            (_, calls) if calls.is_empty() => (held, calls),
            (content, calls) => (content, calls),
        }
    }
}

/// A call found in generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON string (OpenAI's wire form).
    pub arguments: String,
}

/// Splits generated text into its content and the tool calls in it: `<tool_call>` blocks (content is what
/// comes before the first and after the last), or a reply that is only a Llama 3 style JSON call. Calls must name one of
/// `tools`; text that does not parse stays content.
pub fn parse_calls(text: &str, tools: &[Tool]) -> (String, Vec<ToolCall>) {
    let known = |n: &str| tools.iter().any(|t| t.name == n);
    let as_call = |v: &Value| -> Option<ToolCall> {
        let name = v.get("name")?.as_str()?;
        let args = v.get("arguments").or_else(|| v.get("parameters"))?;
        let args = match args {
            // some models write the arguments as a JSON string already
            Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
            other => other.clone(),
        };
        (known(name) && args.is_object()).then(|| ToolCall {
            name: name.to_string(),
            arguments: args.to_string(),
        })
    };
    if let Some(first) = text.find("<tool_call>") {
        let mut calls = Vec::new();
        let mut rest = &text[first..];
        while let Some(start) = rest.find("<tool_call>") {
            let body = &rest[start + "<tool_call>".len()..];
            let (inner, next) = match body.find("</tool_call>") {
                Some(end) => (&body[..end], &body[end + "</tool_call>".len()..]),
                None => (body, ""),
            };
            match serde_json::from_str::<Value>(inner.trim())
                .ok()
                .as_ref()
                .and_then(as_call)
            {
                Some(c) => calls.push(c),
                None => return (text.to_string(), Vec::new()),
            }
            rest = next;
        }
        if !calls.is_empty() {
            // text around the calls stays content: what came before, and anything after the last block
            let mut content = text[..first].trim_end().to_string();
            let tail = rest.trim();
            if !tail.is_empty() {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(tail);
            }
            return (content, calls);
        }
    }
    let trimmed = text.trim();
    if trimmed.starts_with('{')
        && let Some(c) = serde_json::from_str::<Value>(trimmed)
            .ok()
            .as_ref()
            .and_then(as_call)
    {
        return (String::new(), vec![c]);
    }
    (text.to_string(), Vec::new())
}

#[cfg(test)]
mod tests;
