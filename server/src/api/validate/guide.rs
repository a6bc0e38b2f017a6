//! The output constraint a request asks for: `response_format` or one of vLLM's `guided_*` parameters.

use serde_json::Value;

use super::super::error::ApiError;
use super::super::types::CommonParams;
use crate::guided::GuideSpec;

/// The output constraint a request asks for, with the parameter that asked: `response_format` (`text`,
/// `json_object`, `json_schema`) or one of vLLM's `guided_json` / `guided_regex` / `guided_choice` /
/// `guided_grammar`; at most one of them.
pub(super) fn guide_spec(c: &CommonParams) -> Result<Option<(&'static str, GuideSpec)>, ApiError> {
    let mut found: Vec<(&'static str, GuideSpec)> = Vec::new();
    match &c.response_format {
        None | Some(Value::Null) => {}
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => found.push(("response_format", GuideSpec::JsonObject)),
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .filter(|s| s.is_object() || s.is_boolean())
                    .ok_or_else(|| {
                        ApiError::field(
                            "response_format",
                            "response_format of type json_schema needs json_schema.schema, a JSON schema \
                             object",
                        )
                    })?;
                found.push(("response_format", GuideSpec::JsonSchema(schema.clone())));
            }
            Some(t) => {
                return Err(ApiError::field(
                    "response_format",
                    format!(
                        "response_format type must be text, json_object or json_schema, got `{t}`"
                    ),
                ));
            }
            None => {
                return Err(ApiError::field(
                    "response_format",
                    "response_format must be an object with a string `type`",
                ));
            }
        },
    }
    let text = |param: &'static str, v: &Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::field(param, format!("{param} must be a string")))
    };
    if let Some(v) = c.guided_json.as_ref().filter(|v| !v.is_null()) {
        let schema = match v {
            // a schema sent as a JSON string, as some clients do
            Value::String(s) => serde_json::from_str(s).map_err(|e| {
                ApiError::field("guided_json", format!("guided_json is not valid JSON: {e}"))
            })?,
            v => v.clone(),
        };
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(ApiError::field(
                "guided_json",
                "guided_json must be a JSON schema object",
            ));
        }
        found.push(("guided_json", GuideSpec::JsonSchema(schema)));
    }
    if let Some(v) = c.guided_regex.as_ref().filter(|v| !v.is_null()) {
        found.push(("guided_regex", GuideSpec::Regex(text("guided_regex", v)?)));
    }
    if let Some(v) = c.guided_grammar.as_ref().filter(|v| !v.is_null()) {
        found.push((
            "guided_grammar",
            GuideSpec::Lark(text("guided_grammar", v)?),
        ));
    }
    if let Some(v) = c.guided_choice.as_ref().filter(|v| !v.is_null()) {
        let items = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ApiError::field(
                    "guided_choice",
                    "guided_choice must be a non-empty array of strings",
                )
            })?
            .iter()
            .map(|s| text("guided_choice", s))
            .collect::<Result<Vec<_>, _>>()?;
        found.push(("guided_choice", GuideSpec::Choice(items)));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(p, _)| *p).collect();
        return Err(ApiError::field(
            found[1].0,
            format!(
                "at most one output constraint per request, got {}",
                names.join(" and ")
            ),
        ));
    }
    Ok(found.pop())
}
