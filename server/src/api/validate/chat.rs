//! Chat messages → prompt tokens: the turns checked, the template applied, and the template's own text told
//! apart from message content so that only the former may carry special tokens.

use serde_json::{Value, json};

use super::super::tools::{Tool, hermes_turns, tools_json};
use super::{ApiError, ChatTurn, PromptEncoder, TemplateTools, encode};

/// An assistant message's `tool_calls`, checked and put in the form templates read (arguments as an object).
fn tool_calls(i: usize, v: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::field(
                format!("messages[{i}].tool_calls"),
                "tool_calls must be an array",
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, call) in list.iter().enumerate() {
        let param = format!("messages[{i}].tool_calls[{j}]");
        let f = call
            .get("function")
            .filter(|_| call.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
            .ok_or_else(|| {
                ApiError::field(
                    param.clone(),
                    "each tool call is {\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}",
                )
            })?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::field(
                format!("{param}.function.name"),
                "the function name must be a string",
            )
        })?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    ApiError::field(
                        format!("{param}.function.arguments"),
                        "arguments must be a JSON object (sent as a string)",
                    )
                })?,
            Some(v) if v.is_object() => v.clone(),
            Some(_) => {
                return Err(ApiError::field(
                    format!("{param}.function.arguments"),
                    "arguments must be a JSON object (sent as a string)",
                ));
            }
        };
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        out.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
    }
    Ok(out)
}

fn chat_turns(messages: &[Value]) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::field(
            "messages",
            "messages must contain at least one message",
        ));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "developer" | "user" | "assistant" | "tool")) => r.to_string(),
            Some(r) => {
                return Err(ApiError::field(
                    format!("messages[{i}].role"),
                    format!(
                        "role must be one of system, developer, user, assistant, tool; got `{r}`"
                    ),
                ));
            }
            None => {
                return Err(ApiError::field(
                    format!("messages[{i}].role"),
                    "each message needs a string role",
                ));
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                format!("messages[{i}].content"),
                                "only text content parts ({\"type\":\"text\",\"text\":...}) are supported",
                            ));
                        }
                    }
                }
                text
            }
            _ => {
                return Err(ApiError::field(
                    format!("messages[{i}].content"),
                    "content must be a string or an array of text parts",
                ));
            }
        };
        let calls = if role == "assistant" {
            tool_calls(i, m.get("tool_calls"))?
        } else {
            Vec::new()
        };
        let tool_call_id = match m.get("tool_call_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::field(
                    format!("messages[{i}].tool_call_id"),
                    "tool_call_id must be a string",
                ));
            }
        };
        turns.push(ChatTurn {
            role,
            content,
            tool_calls: calls,
            tool_call_id,
        });
    }
    Ok(turns)
}

/// The prompt tokens of a chat request (also used by `/tokenize`).
///
/// The template's own text is tokenized with special tokens parsed (it writes `<|im_start|>` and friends);
/// message content is user text and is not (unless the server allows it), so content cannot forge a turn.
/// To tell them apart the template is rendered once more with a marker in place of each content; where the
/// template transforms content in a way the markers cannot follow (anything beyond trimming), the whole text
/// is tokenized as one only if no content holds special-token text, and refused otherwise.
///
/// `tools` are the tools shown to the model. A template that renders tools gets them (and earlier calls) in
/// its context, as Hugging Face's `apply_chat_template(tools=...)` passes them; that text is the template's,
/// so it must not hold special-token text. Otherwise the tools, the calls and the results become message
/// content in the Hermes style ([`hermes_turns`]).
pub fn chat_prompt_tokens(
    messages: &[Value],
    add_generation_prompt: bool,
    tools: Option<&[Tool]>,
    enc: &dyn PromptEncoder,
) -> Result<Vec<u32>, ApiError> {
    let mut turns = chat_turns(messages)?;
    let template_tools = !matches!(enc.template_tools(), TemplateTools::Ignored);
    let tools_value = tools.filter(|_| template_tools).map(tools_json);
    if template_tools {
        // text the template writes from the request outside message content: no special tokens in it
        let mut outside: Vec<(String, String)> = Vec::new();
        if let Some(t) = &tools_value {
            outside.push(("tools".into(), t.to_string()));
        }
        for (i, t) in turns.iter().enumerate() {
            for (j, c) in t.tool_calls.iter().enumerate() {
                outside.push((format!("messages[{i}].tool_calls[{j}]"), c.to_string()));
            }
            if let Some(id) = &t.tool_call_id {
                outside.push((format!("messages[{i}].tool_call_id"), id.clone()));
            }
        }
        for (param, text) in outside {
            let plain = enc.encode_piece(&text, false);
            if plain.is_err() || plain != enc.encode_piece(&text, true) {
                return Err(ApiError::field(
                    param,
                    "contains special-token text, which the chat template would pass on as control tokens",
                ));
            }
        }
    } else if tools.is_some()
        || turns
            .iter()
            .any(|t| t.role == "tool" || !t.tool_calls.is_empty())
    {
        turns = hermes_turns(turns, tools);
    }
    let render = |turns: &[ChatTurn]| {
        match &tools_value {
            Some(t) => enc.render_chat_tools(turns, t, add_generation_prompt),
            None => enc.render_chat(turns, add_generation_prompt),
        }
        .map_err(|e| ApiError::field("messages", format!("cannot apply the chat template: {e}")))
    };
    let text = render(&turns)?;
    if enc.special_tokens_in_chat_content() {
        return encode(enc, "messages", &text, true);
    }
    if let Some(pieces) = split_content(&turns, &text, render)? {
        let mut tokens = Vec::new();
        for (i, (piece, special)) in pieces.iter().enumerate() {
            let ids = if i == 0 {
                enc.encode(piece, *special)
            } else {
                enc.encode_piece(piece, *special)
            };
            tokens.extend(ids.map_err(|e| {
                ApiError::field("messages", format!("cannot tokenize messages: {e}"))
            })?);
        }
        return Ok(tokens);
    }
    for (i, t) in turns.iter().enumerate() {
        let as_text = enc.encode_piece(&t.content, false);
        let as_special = enc.encode_piece(&t.content, true);
        if as_text.is_ok() && as_text != as_special {
            return Err(ApiError::field(
                format!("messages[{i}].content"),
                "content contains special-token text, and this chat template rewrites content in a way \
                 that cannot keep it as plain text; remove it (or start the server with \
                 --chat-special-tokens)",
            ));
        }
    }
    encode(enc, "messages", &text, true)
}

/// Marker standing for turn `i`'s content (private-use characters no template touches).
fn marker(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

/// `text` (the template applied to `turns`) cut into template pieces (special tokens parsed) and content
/// pieces (not), or `None` when the template's treatment of content cannot be followed.
fn split_content(
    turns: &[ChatTurn],
    text: &str,
    render: impl Fn(&[ChatTurn]) -> Result<String, ApiError>,
) -> Result<Option<Vec<(String, bool)>>, ApiError> {
    let marked: Vec<ChatTurn> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| ChatTurn {
            content: marker(i),
            ..t.clone()
        })
        .collect();
    let with_markers = render(&marked)?;
    // Does the template trim content? Pad the markers and see whether the padding survives.
    let padded: Vec<ChatTurn> = marked
        .iter()
        .map(|t| ChatTurn {
            content: format!(" {} ", t.content),
            ..t.clone()
        })
        .collect();
    let trims = !render(&padded)?.contains(&format!(" {} ", marker(0)));
    let mut pieces = Vec::new();
    let mut rebuilt = String::new();
    let mut rest = with_markers.as_str();
    for (i, t) in turns.iter().enumerate() {
        let m = marker(i);
        let Some(at) = rest.find(&m) else {
            if t.content.is_empty() {
                continue; // a template may skip empty content
            }
            return Ok(None);
        };
        let content = if trims {
            t.content.trim()
        } else {
            t.content.as_str()
        };
        pieces.push((rest[..at].to_owned(), true));
        pieces.push((content.to_owned(), false));
        rebuilt.push_str(&rest[..at]);
        rebuilt.push_str(content);
        rest = &rest[at + m.len()..];
    }
    if rest.contains('\u{F8F0}') {
        return Ok(None); // a content rendered twice: not followed
    }
    pieces.push((rest.to_owned(), true));
    rebuilt.push_str(rest);
    if rebuilt != text {
        return Ok(None);
    }
    pieces.retain(|(p, _)| !p.is_empty());
    Ok(Some(pieces))
}
