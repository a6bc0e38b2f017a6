//! The HTTP side of `fetch`: where secret headers may go (the URL's own origin), redirects followed hop by hop,
//! URLs shown without their query, and the `--headers-dir` reader.

use std::path::{Path, PathBuf};

use super::{FetchError, flags, io};

/// What one fetch downloads: the resolved URL (its query is never logged: it may be a signature), the headers
/// for that URL's origin, and the output file.
pub(super) struct Target {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub out: PathBuf,
    pub stall_timeout: u64,
}

/// Redirect hops followed before giving up.
pub(super) const MAX_REDIRECTS: u32 = 10;

/// `scheme://authority` of an absolute URL, lower-cased: the unit the secret headers are bound to.
pub(super) fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}").to_ascii_lowercase()
}

/// A URL for logs and errors: without its query and fragment (pre-signed URLs carry credentials there).
pub(super) fn shown(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}?…", &url[..i]),
        None => url.to_owned(),
    }
}

/// The absolute URL a `Location` header points to, relative to `base`.
pub(super) fn join(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_owned());
    }
    let (scheme, _) = base.split_once("://")?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let o = origin(base);
    if location.starts_with('/') {
        return Some(format!("{o}{location}"));
    }
    let path = &base[o.len()..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{o}{dir}{location}"))
}

/// Reads `--headers-dir`: one header per regular file (symlinks followed, as a mounted Secret's keys are).
/// Errors name the file and the rule broken, never the value.
pub(super) fn read_headers(dir: &Path) -> Result<Vec<(String, String)>, FetchError> {
    let usage =
        |m: String| FetchError::Usage(format!("--{} {}: {m}", flags::HEADERS_DIR, dir.display()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !name.bytes().all(token) {
            return Err(usage(format!(
                "file {name:?} is not a valid HTTP header name"
            )));
        }
        if ["range", "host", "content-length", "transfer-encoding"]
            .contains(&name.to_ascii_lowercase().as_str())
        {
            return Err(usage(format!("header {name} is set by fetch itself")));
        }
        let path = entry.path();
        let raw = std::fs::read(&path).map_err(io("reading", &path))?;
        let value = String::from_utf8(raw)
            .map_err(|_| usage(format!("the value of header {name} is not UTF-8")))?;
        let value = value.trim();
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(usage(format!(
                "the value of header {name} holds a line break or control character"
            )));
        }
        out.push((name, value.to_owned()));
    }
    out.sort();
    Ok(out)
}

/// GET `target.url`, following redirects: the headers go only to hops on the original URL's origin (not to a
/// CDN it redirects to, not after a downgrade to http). Returns the final response and URL.
pub(super) fn get(
    agent: &ureq::Agent,
    target: &Target,
    range_from: u64,
) -> Result<(ureq::http::Response<ureq::Body>, String), FetchError> {
    let home = origin(&target.url);
    let mut url = target.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut req = agent.get(&url);
        if origin(&url) == home {
            for (name, value) in &target.headers {
                req = req.header(name, value);
            }
        }
        if range_from > 0 {
            req = req.header("Range", format!("bytes={range_from}-"));
        }
        let resp = req.call().map_err(|e| FetchError::Transport {
            url: shown(&url),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Ok((resp, url));
        }
        let next = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| join(&url, l))
            .ok_or_else(|| FetchError::BadRedirect {
                url: shown(&url),
                status,
            })?;
        eprintln!(
            "fetch: GET {} -> HTTP {status} to {}",
            shown(&url),
            shown(&next)
        );
        url = next;
    }
    Err(FetchError::Redirects {
        url: shown(&target.url),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_are_bound_to_the_origin_and_locations_resolve_like_a_browser() {
        assert_eq!(origin("https://HF.co:443/a/b?x"), "https://hf.co:443");
        assert_eq!(origin("http://h/a"), "http://h");
        assert_ne!(
            origin("https://h/a"),
            origin("http://h/a"),
            "a downgrade is another origin"
        );
        assert_eq!(
            shown("https://s3/x.gguf?X-Amz-Signature=zz"),
            "https://s3/x.gguf?…"
        );
        assert_eq!(shown("https://h/x.gguf"), "https://h/x.gguf");
        let base = "https://hub/org/repo/resolve/main/m.gguf?dl=1";
        assert_eq!(
            join(base, "https://cdn/x?sig=1").unwrap(),
            "https://cdn/x?sig=1"
        );
        assert_eq!(join(base, "//cdn/x").unwrap(), "https://cdn/x");
        assert_eq!(join(base, "/api/x").unwrap(), "https://hub/api/x");
        assert_eq!(
            join(base, "other.gguf").unwrap(),
            "https://hub/org/repo/resolve/main/other.gguf"
        );
        assert_eq!(join("http://h", "x").unwrap(), "http://h/x");
    }

    #[test]
    fn header_files_become_headers_and_bad_ones_are_named_without_their_value() {
        let d = std::env::temp_dir().join(format!("fetch-headers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Authorization"), "Bearer t0k\n").unwrap();
        std::fs::write(d.join("X-Extra"), " v ").unwrap();
        std::fs::write(d.join("..data"), "ignored").unwrap();
        assert_eq!(
            read_headers(&d).unwrap(),
            [
                ("Authorization".to_owned(), "Bearer t0k".to_owned()),
                ("X-Extra".to_owned(), "v".to_owned())
            ]
        );
        std::fs::write(d.join("Range"), "bytes=0-").unwrap();
        let e = read_headers(&d).unwrap_err().to_string();
        assert!(e.contains("header Range is set by fetch itself"), "{e}");
        std::fs::remove_file(d.join("Range")).unwrap();
        std::fs::write(d.join("Bad Name"), "x").unwrap();
        let e = read_headers(&d).unwrap_err().to_string();
        assert!(
            e.contains("\"Bad Name\" is not a valid HTTP header name"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
