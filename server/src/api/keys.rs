//! API keys: none, one fixed key (`--api-key` / `LLAMA_API_KEY`), or the keys in `--api-key-file`, re-read while
//! serving so keys rotate without a restart. The file may be a file (one key per line) or a directory — a mounted
//! Secret, one key per entry (names starting with '.' are the kubelet's bookkeeping and skipped). The kubelet
//! swaps a mounted Secret atomically, so a re-read sees the old set or the new one, never half of each.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often `--api-key-file` is read again (at most; only when a request needs a check).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The accepted keys.
#[derive(Debug)]
pub enum ApiKeys {
    /// No key required.
    Open,
    /// One key, fixed for the process's life.
    Fixed(String),
    /// The keys in a file or directory, re-read at most every [`RELOAD_EVERY`].
    Watched {
        path: PathBuf,
        state: Mutex<Watched>,
    },
}

#[derive(Debug)]
pub struct Watched {
    keys: Vec<String>,
    checked: Instant,
}

/// Reads the keys at `path`: a directory's entries (one key each) or a file's non-empty lines.
pub fn read_keys(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let mut keys = Vec::new();
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let key = std::fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            keys.push(key.trim().to_owned());
        }
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.extend(text.lines().map(|l| l.trim().to_owned()));
    }
    keys.retain(|k| !k.is_empty());
    keys.sort();
    keys.dedup();
    anyhow::ensure!(!keys.is_empty(), "{} holds no API key", path.display());
    Ok(keys)
}

impl ApiKeys {
    /// From the command line: the file wins (clap makes the two exclusive); an empty key means none.
    pub fn new(key: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context;
        if let Some(path) = file {
            let keys = read_keys(path).context("--api-key-file")?;
            return Ok(Self::Watched {
                path: path.to_owned(),
                state: Mutex::new(Watched {
                    keys,
                    checked: Instant::now(),
                }),
            });
        }
        Ok(match key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(k) => Self::Fixed(k.to_owned()),
            None => Self::Open,
        })
    }

    /// Whether a key is required at all.
    pub fn required(&self) -> bool {
        !matches!(self, Self::Open)
    }

    /// How many keys are accepted now.
    pub fn count(&self) -> usize {
        match self {
            Self::Open => 0,
            Self::Fixed(_) => 1,
            Self::Watched { state, .. } => state.lock().map(|s| s.keys.len()).unwrap_or(0),
        }
    }

    /// Whether `token` is an accepted key (each compared in constant time). A watched file is re-read first when
    /// the last read is older than [`RELOAD_EVERY`]; a read that fails or finds no key keeps the previous keys
    /// (a Secret being replaced must not lock every client out) and is logged.
    pub fn accepts(&self, token: Option<&str>, same: impl Fn(&[u8], &[u8]) -> bool) -> bool {
        match self {
            Self::Open => true,
            Self::Fixed(k) => token.is_some_and(|t| same(t.as_bytes(), k.as_bytes())),
            Self::Watched { path, state } => {
                let Ok(mut st) = state.lock() else {
                    return false;
                };
                if st.checked.elapsed() >= RELOAD_EVERY {
                    st.checked = Instant::now();
                    match read_keys(path) {
                        Ok(keys) if keys != st.keys => {
                            tracing::info!(
                                path = %path.display(),
                                keys = keys.len(),
                                "API keys reloaded"
                            );
                            st.keys = keys;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            "keeping the {} previous API key(s): {e:#}",
                            st.keys.len()
                        ),
                    }
                }
                let Some(t) = token else {
                    return false;
                };
                // Every key is compared, so the time taken does not say which one matched.
                st.keys
                    .iter()
                    .fold(false, |ok, k| same(t.as_bytes(), k.as_bytes()) | ok)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &[u8], b: &[u8]) -> bool {
        a == b
    }

    #[test]
    fn a_file_holds_one_key_per_line_and_a_directory_one_per_entry() {
        let d = std::env::temp_dir().join(format!("api-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("secret")).unwrap();
        std::fs::write(d.join("list"), "alpha\n\n  beta  \nalpha\n").unwrap();
        assert_eq!(read_keys(&d.join("list")).unwrap(), ["alpha", "beta"]);
        std::fs::write(d.join("secret/old"), "k1\n").unwrap();
        std::fs::write(d.join("secret/new"), "k2").unwrap();
        std::fs::write(d.join("secret/..data"), "not a key").unwrap();
        assert_eq!(read_keys(&d.join("secret")).unwrap(), ["k1", "k2"]);
        std::fs::write(d.join("empty"), "\n \n").unwrap();
        let e = read_keys(&d.join("empty")).unwrap_err().to_string();
        assert!(e.contains("holds no API key"), "{e}");

        let keys = ApiKeys::new(None, Some(&d.join("secret"))).unwrap();
        assert!(keys.accepts(Some("k1"), eq) && keys.accepts(Some("k2"), eq));
        assert!(!keys.accepts(Some("k3"), eq) && !keys.accepts(None, eq));
        assert_eq!(keys.count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn no_key_means_open_and_a_fixed_key_is_the_only_one() {
        assert!(ApiKeys::new(None, None).unwrap().accepts(None, eq));
        assert!(!ApiKeys::new(Some(" "), None).unwrap().required());
        let fixed = ApiKeys::new(Some("s3"), None).unwrap();
        assert!(fixed.accepts(Some("s3"), eq) && !fixed.accepts(Some("s4"), eq));
    }
}
