//! Stop strings over streamed text: emit text as it comes, hold back any tail that could still become a stop
//! string, and cut the text before the first stop string that completes.
//!
//! Each stop string runs as a KMP automaton over the bytes as they arrive: its state is the longest prefix of
//! the stop string that ends the text so far, so a new piece costs time linear in its own length (amortised),
//! whatever the stop strings' lengths or the text's — nothing is ever rescanned.

/// One stop string and its automaton.
#[derive(Debug, Clone, Default)]
struct Automaton {
    pattern: Vec<u8>,
    /// `fail[i]`: length of the longest proper prefix of `pattern[..=i]` that is also its suffix.
    fail: Vec<usize>,
    /// Length of the longest prefix of `pattern` that ends the text so far (always < the pattern's length).
    state: usize,
}

impl Automaton {
    fn new(pattern: &str) -> Self {
        let p = pattern.as_bytes().to_vec();
        let mut fail = vec![0; p.len()];
        let mut k = 0;
        for i in 1..p.len() {
            while k > 0 && p[i] != p[k] {
                k = fail[k - 1];
            }
            if p[i] == p[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Self {
            pattern: p,
            fail,
            state: 0,
        }
    }

    /// Feeds one byte; true when the whole pattern now ends the text (the state then restarts).
    fn step(&mut self, b: u8) -> bool {
        let p = &self.pattern;
        while self.state > 0 && p[self.state] != b {
            self.state = self.fail[self.state - 1];
        }
        if p[self.state] == b {
            self.state += 1;
        }
        if self.state == p.len() {
            self.state = self.fail[p.len() - 1];
            return true;
        }
        false
    }
}

/// Per-choice stop-string state.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<Automaton>,
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
            stops: stop
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| Automaton::new(s))
                .collect(),
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
        // The first completion of each stop string within this piece; the earliest-starting one wins.
        let mut hit: Option<usize> = None;
        let mut done = vec![false; self.stops.len()];
        for (i, &b) in piece.as_bytes().iter().enumerate() {
            for (a, d) in self.stops.iter_mut().zip(done.iter_mut()) {
                if !*d && a.step(b) {
                    *d = true;
                    let start = before + i + 1 - a.pattern.len();
                    hit = Some(hit.map_or(start, |h| h.min(start)));
                }
            }
        }
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            return Emit {
                text: self.drain_to(self.text.len()),
                stopped: true,
            };
        }
        let hold = self.stops.iter().map(|a| a.state).max().unwrap_or(0);
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

    #[test]
    fn overlapping_prefixes_are_found_as_a_rescan_would() {
        // "aab" inside "xaaab": the automaton falls back instead of restarting.
        let (out, stopped, _) = run(&["aab"], &["xa", "a", "ab", "tail"]);
        assert!(stopped);
        assert_eq!(out.concat(), "xa");
        let (out, stopped, rest) = run(&["abab"], &["aba", "c"]);
        assert!(!stopped);
        assert_eq!(out.concat() + &rest, "abac");
    }

    #[test]
    fn long_stop_strings_cost_time_linear_in_the_text() {
        // 64 KiB stop strings of one repeated byte: a rescan per token would be quadratic (the old matcher
        // compared every prefix length against the text's end on every piece).
        let long = "a".repeat(1 << 16);
        let mut m = StopMatcher::new(vec![long.clone() + "b", long]);
        let t = std::time::Instant::now();
        let mut out = String::new();
        for _ in 0..(1 << 15) {
            out.push_str(&m.push("a").text);
        }
        assert!(!m.stopped());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?} for 32768 pieces",
            t.elapsed()
        );
        assert_eq!(
            out, "",
            "every byte may still begin a stop string: all held back"
        );
        assert_eq!(m.finish().len(), 1 << 15);
    }
}
