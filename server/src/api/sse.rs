//! Server-sent-events framing: `data: {json}\n\n` chunks ending with `data: [DONE]\n\n`.

use serde::Serialize;

/// One SSE event carrying `value` as JSON.
pub fn event<T: Serialize>(value: &T) -> String {
    // Serializing our own response types cannot fail (no maps with non-string keys, no custom Serialize).
    let json = serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    format!("data: {json}\n\n")
}

/// The final event of every stream.
pub const DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_and_a_blank_line() {
        assert_eq!(event(&serde_json::json!({"a": 1})), "data: {\"a\":1}\n\n");
        assert_eq!(DONE, "data: [DONE]\n\n");
    }
}
