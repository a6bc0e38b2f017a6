use super::*;

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time"}}])
}

#[test]
fn tools_and_tool_choice_are_checked_naming_the_field() {
    let (tools, choice) = parse_tools(Some(&weather()), None).unwrap().unwrap();
    assert_eq!(tools.len(), 2);
    assert_eq!(choice, ToolChoice::Auto);
    assert_eq!(tools[1].parameters, json!({"type": "object"}));
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, c) = parse_tools(Some(&weather()), Some(&named))
        .unwrap()
        .unwrap();
    assert_eq!(c, ToolChoice::Named("get_time".into()));
    assert_eq!(parse_tools(None, Some(&json!("none"))).unwrap(), None);
    for (tools, choice, param) in [
        (json!({}), json!(null), "tools"),
        (json!([{"type": "retrieval"}]), json!(null), "tools[0]"),
        (
            json!([{"type": "function", "function": {"name": "a b"}}]),
            json!(null),
            "tools[0].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
            json!(null),
            "tools[1].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
            json!(null),
            "tools[0].function.parameters",
        ),
        (weather(), json!("sometimes"), "tool_choice"),
        (
            weather(),
            json!({"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
        ),
        (json!(null), json!("required"), "tool_choice"),
    ] {
        let err = parse_tools(Some(&tools), Some(&choice)).unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidField { param: p, .. } if p == param),
            "{tools} {choice}: {err:?}"
        );
    }
}

#[test]
fn calls_are_found_in_hermes_blocks_and_llama_json_and_nothing_else() {
    let (tools, _) = parse_tools(Some(&weather()), None).unwrap().unwrap();
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let (content, calls) = parse_calls(text, &tools);
    assert_eq!(content, "Let me check.");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let (content, calls) = parse_calls(
        r#"{"name": "get_weather", "parameters": {"city": "Rome"}}"#,
        &tools,
    );
    assert_eq!((content.as_str(), calls.len()), ("", 1));
    // unknown functions, broken JSON and plain JSON answers stay text
    for text in [
        "<tool_call>\n{\"name\": \"launch\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": \n</tool_call>",
        r#"{"city": "Paris"}"#,
        "It is sunny.",
    ] {
        let (content, calls) = parse_calls(text, &tools);
        assert!(calls.is_empty(), "{text}");
        assert_eq!(content, text);
    }
}

/// Feeds `text` to a catcher in pieces cut at every `step` bytes (on char boundaries): the content it
/// passes on, and the calls at the end.
fn catch(format: ToolFormat, text: &str, step: usize, tools: &[Tool]) -> (String, Vec<ToolCall>) {
    let mut c = CallCatcher::new(format);
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        let mut j = (i + step).min(text.len());
        while !text.is_char_boundary(j) {
            j += 1;
        }
        out.push_str(&c.push(&text[i..j]));
        i = j;
    }
    let (rest, calls) = c.finish(tools);
    out.push_str(&rest);
    (out, calls)
}

#[test]
fn the_catcher_gives_the_same_answer_however_the_text_is_cut() {
    let (tools, _) = parse_tools(Some(&weather()), None).unwrap().unwrap();
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>";
    for (format, text, content, names) in [
        (
            ToolFormat::Hermes,
            format!("Let me look.\n{call}"),
            "Let me look.\n",
            vec!["get_weather"],
        ),
        (
            ToolFormat::Hermes,
            format!("{call}\n{call}"),
            "",
            vec!["get_weather"; 2],
        ),
        (
            ToolFormat::Hermes,
            format!("{call}\nDone."),
            "Done.",
            vec!["get_weather"],
        ),
        // not calls: everything is content, nothing is lost
        (
            ToolFormat::Hermes,
            "a < b, and <tool is not a tag".into(),
            "a < b, and <tool is not a tag",
            vec![],
        ),
        (
            ToolFormat::Hermes,
            "ends with <tool_ca".into(),
            "ends with <tool_ca",
            vec![],
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>\n{\"name\": \"launch\"}".into(),
            "<tool_call>\n{\"name\": \"launch\"}",
            vec![],
        ),
        (
            ToolFormat::Llama3Json,
            "  {\"name\": \"get_time\", \"parameters\": {}}".into(),
            "",
            vec!["get_time"],
        ),
        (
            ToolFormat::Llama3Json,
            "{\"answer\": 42}".into(),
            "{\"answer\": 42}",
            vec![],
        ),
        (
            ToolFormat::Llama3Json,
            " Hello {there}".into(),
            " Hello {there}",
            vec![],
        ),
    ] {
        for step in 1..=text.len() {
            let (got, calls) = catch(format, &text, step, &tools);
            assert_eq!(got, content, "{format:?} {text:?} cut every {step}");
            assert_eq!(
                calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                names,
                "{format:?} {text:?} cut every {step}"
            );
        }
    }
    // content before a call is passed on as it comes; the tag's first bytes are held back, then released
    let mut c = CallCatcher::new(ToolFormat::Hermes);
    assert_eq!(c.push("Sure <tool"), "Sure ");
    assert_eq!(c.push("box> opens"), "<toolbox> opens");
}

#[test]
fn hermes_turns_carry_tools_calls_and_results_as_content() {
    let (tools, _) = parse_tools(Some(&weather()), None).unwrap().unwrap();
    let turn = |role: &str, content: &str| ChatTurn {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    };
    let mut asked = turn("assistant", "");
    asked.tool_calls = vec![json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}})];
    let turns = vec![
        turn("user", "Weather in Paris and Rome?"),
        asked,
        turn("tool", "18C"),
        turn("tool", "21C"),
    ];
    let out = hermes_turns(turns.clone(), Some(&tools));
    let roles: Vec<&str> = out.iter().map(|t| t.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert!(out[0].content.contains("<tools>") && out[0].content.contains("get_time"));
    assert_eq!(
        out[2].content,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
    );
    assert!(out[2].tool_calls.is_empty());
    assert_eq!(
        out[3].content,
        "<tool_response>\n18C\n</tool_response>\n<tool_response>\n21C\n</tool_response>"
    );
    // a system turn of the request keeps its text, the tools follow it; without tools shown none are added
    let mut with_system = vec![turn("system", "Be brief.")];
    with_system.extend(turns.clone());
    let out = hermes_turns(with_system, Some(&tools));
    assert!(out[0].content.starts_with("Be brief.\n\n") && out[0].content.contains("<tools>"));
    assert_eq!(hermes_turns(turns, None)[0].role, "user");
}

#[test]
fn the_call_grammar_lists_only_the_allowed_functions() {
    let (tools, _) = parse_tools(Some(&weather()), None).unwrap().unwrap();
    assert_eq!(
        call_grammar(&tools, &ToolChoice::Auto, true, ToolFormat::Hermes),
        None
    );
    let g = call_grammar(
        &tools,
        &ToolChoice::Named("get_time".into()),
        true,
        ToolFormat::Hermes,
    )
    .unwrap();
    assert!(
        g.contains("\"get_time\"") && !g.contains("get_weather"),
        "{g}"
    );
    assert!(!g.contains(")*"), "a named choice is one call: {g}");
    let g = call_grammar(&tools, &ToolChoice::Required, true, ToolFormat::Hermes).unwrap();
    assert!(
        g.contains("get_weather") && g.contains("get_time") && g.contains(")*"),
        "{g}"
    );
}
