//! The byte stream of each HTTP connection. Everything passes through untouched except the few responses
//! actix-http's HTTP/1 dispatcher writes by itself, before any handler (and so before our middleware) runs:
//! 400 for a request head that does not parse, 408 when the head does not arrive within the client request
//! timeout, 431 when it is too large. actix sends those with no body; here they get the OpenAI error body
//! every other error has, so a client (or a probe) parsing `{"error": …}` never meets an empty 4xx.
//!
//! Recognising them needs no HTTP parsing of our own: our handlers never answer a 4xx without a JSON body
//! (the `errors_as_json` middleware sees to that), so a write that is exactly one complete response head with
//! a 4xx status and `content-length: 0` can only come from the dispatcher.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::ResponseError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

/// A connection whose dispatcher-written error responses get JSON bodies.
#[derive(Debug)]
pub struct JsonErrors<T> {
    io: T,
    /// A rewritten response not yet fully written (it is sent before anything else).
    pending: Vec<u8>,
    sent: usize,
}

impl<T> JsonErrors<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            pending: Vec::new(),
            sent: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        match with_json_body(buf) {
            Some(rewritten) => {
                // Taken whole: the caller's bytes are accounted for; the rewrite goes out before any later
                // write, flush or shutdown.
                this.pending = rewritten;
                let _ = this.poll_pending(cx)?;
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `buf` with a JSON error body when it is exactly one bodiless 4xx response head; `None` otherwise.
pub fn with_json_body(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ".as_slice())?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..500).contains(&status) {
        return None;
    }
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_len != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_len - 2]).ok()?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next()?;
    let mut headers = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("content-type") {
            headers.push(line);
        }
    }
    if !empty {
        return None;
    }
    let err = ApiError::Protocol(status);
    let body = serde_json::to_vec(&err.body()).ok()?;
    let mut out = format!("{status_line}\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    debug_assert_eq!(err.status_code().as_u16(), status);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ErrorBody;

    fn split(resp: &[u8]) -> (String, ErrorBody) {
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4;
        let head = String::from_utf8(resp[..at].to_vec()).expect("utf8");
        (
            head,
            serde_json::from_slice(&resp[at..]).expect("json body"),
        )
    }

    #[test]
    fn dispatcher_errors_get_the_openai_body() {
        for (status, reason, code) in [
            (408, "Request Timeout", "request_timeout"),
            (
                431,
                "Request Header Fields Too Large",
                "request_header_fields_too_large",
            ),
            (400, "Bad Request", "malformed_http_request"),
        ] {
            let raw = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\ndate: Sun, 06 Dec 2026 15:00:00 GMT\r\n\r\n"
            );
            let out = with_json_body(raw.as_bytes()).expect("rewritten");
            let (head, body) = split(&out);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} {reason}\r\n")),
                "{head}"
            );
            assert!(
                head.contains("connection: close\r\n") && head.contains("date: "),
                "{head}"
            );
            assert!(
                head.contains("content-type: application/json\r\n"),
                "{head}"
            );
            let len = out.len() - head.len();
            assert!(
                head.contains(&format!("content-length: {len}\r\n")),
                "{head}"
            );
            assert_eq!(body.error.code, code);
            assert_eq!(body.error.r#type, "invalid_request_error");
            assert!(!body.error.message.is_empty());
        }
    }

    #[test]
    fn everything_else_passes_untouched() {
        for raw in [
            // a success, a JSON error, a body after the head, a chunked stream, a body chunk, a partial head
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            "2a\r\ndata: {\"x\":1}\r\n",
            "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n",
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(with_json_body(raw.as_bytes()), None, "{raw:?}");
        }
    }
}
