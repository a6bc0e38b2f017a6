//! Stop strings over streamed text: emit text as it comes, hold back any tail that could still become a stop
//! string, and cut the text before the first stop string that completes.

/// Per-choice stop-string state.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stop: Vec<String>,
    /// All text so far (cut at a stop string once one matched).
    text: String,
    /// Bytes of `text` already emitted.
    emitted: usize,
    stopped: bool,
}

/// What one piece of new text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// Text safe to send now.
    pub text: String,
    /// A stop string matched: the choice ends here.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop,
            ..Self::default()
        }
    }

    /// All text so far, held-back tail included.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, piece: &str) -> Emit {
        if self.stopped {
            return Emit {
                text: String::new(),
                stopped: true,
            };
        }
        let before = self.text.len();
        self.text.push_str(piece);
        // A stop string may straddle the previous end: search from where it could start.
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = before.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            return Emit {
                text: self.drain_to(self.text.len()),
                stopped: true,
            };
        }
        let hold = self.partial_stop_suffix();
        Emit {
            text: self.drain_to(self.text.len() - hold),
            stopped: false,
        }
    }

    /// The held-back text, at the end of the choice.
    pub fn finish(&mut self) -> String {
        self.drain_to(self.text.len())
    }

    fn drain_to(&mut self, end: usize) -> String {
        let mut end = end.max(self.emitted).min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self
            .text
            .get(self.emitted..end)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.emitted.max(end);
        out
    }

    /// Bytes at the end of the text that are a proper prefix of some stop string.
    fn partial_stop_suffix(&self) -> usize {
        let t = self.text.as_bytes();
        self.stop
            .iter()
            .map(|s| {
                let s = s.as_bytes();
                (1..s.len().min(t.len() + 1))
                    .rev()
                    .find(|&k| t.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stop.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let e = m.push(p);
            out.push(e.text);
            if e.stopped {
                return (out, true, m.finish());
            }
        }
        let rest = m.finish();
        (out, false, rest)
    }

    #[test]
    fn without_stop_strings_text_passes_straight_through() {
        assert_eq!(
            run(&[], &["Hello", " world"]),
            (vec!["Hello".into(), " world".into()], false, String::new())
        );
    }

    #[test]
    fn a_stop_string_across_pieces_ends_the_text_before_it() {
        let (out, stopped, rest) = run(&[" STOP"], &["Hello", " world", " ST", "OP", " more"]);
        assert!(stopped);
        assert_eq!(out.concat() + &rest, "Hello world");
        assert_eq!(
            out[2], "",
            "` ST` is held back: it may begin the stop string"
        );
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        let (out, stopped, _) = run(&[" STX"], &["Hello", " ST", "OP"]);
        assert!(!stopped);
        assert_eq!(out, vec!["Hello", "", " STOP"]);
    }

    #[test]
    fn held_back_text_is_released_at_the_end() {
        let (out, stopped, rest) = run(&["\n\n"], &["a", "\n"]);
        assert!(!stopped);
        assert_eq!((out.concat(), rest), ("a".into(), "\n".into()));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (out, stopped, _) = run(&["c", "b"], &["abc"]);
        assert!(stopped);
        assert_eq!(out, vec!["a"]);
    }

    #[test]
    fn multibyte_text_is_never_split() {
        let (out, stopped, _) = run(&["é!"], &["café", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "caf");
    }
}
