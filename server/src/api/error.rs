//! The one error type of the HTTP boundary. Each variant has a short stable label (metrics and the JSON `code`);
//! the HTTP status is decided only in the `ResponseError` impl below.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, of the wrong shape, or outside its bound.
    #[error("{message}")]
    InvalidField { param: String, message: String },
    /// The body is not JSON of the expected shape.
    #[error("malformed request body: {0}")]
    MalformedJson(String),
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the server is at capacity ({queued} requests queued); retry after {retry_after_s} s")]
    QueueFull { queued: usize, retry_after_s: u64 },
    #[error("the server is shutting down and accepts no new requests")]
    Draining,
    #[error("the model is still loading")]
    Loading,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("request bodies must be JSON (Content-Type: application/json), got {0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    /// The client left before a non-streaming answer was ready (logged and counted; nobody reads the body).
    #[error("the client disconnected")]
    ClientGone,
    #[error("internal error: {0}")]
    Internal(String),
    /// actix's HTTP/1 dispatcher refused the request head before any handler ran (400, 408 or 431); the body
    /// is added on the wire ([`super::wire`]).
    #[error("{}", protocol_message(*.0))]
    Protocol(u16),
}

fn protocol_message(status: u16) -> &'static str {
    match status {
        408 => "the request head was not received within the client request timeout (5 s)",
        431 => "the request head is too large (at most 96 headers and 128 KiB)",
        _ => "the request is not valid HTTP/1.1",
    }
}

impl ApiError {
    /// A field error: `param` is the JSON field, `message` names its bound.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            param: param.into(),
            message: message.into(),
        }
    }

    /// Short stable label, used as the JSON `code` and as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidField { .. } => "invalid_value",
            Self::MalformedJson(_) => "invalid_json",
            Self::ModelNotFound(_) => "model_not_found",
            Self::Unauthorized => "invalid_api_key",
            Self::QueueFull { .. } => "queue_full",
            Self::Draining => "draining",
            Self::Loading => "model_loading",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::ClientGone => "client_disconnected",
            Self::Internal(_) => "internal_error",
            Self::Protocol(408) => "request_timeout",
            Self::Protocol(431) => "request_header_fields_too_large",
            Self::Protocol(_) => "malformed_http_request",
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidField { .. }
            | Self::MalformedJson(_)
            | Self::ModelNotFound(_)
            | Self::NotFound(_)
            | Self::MethodNotAllowed { .. }
            | Self::UnsupportedMediaType(_)
            | Self::PayloadTooLarge(_)
            | Self::ClientGone
            | Self::Protocol(_) => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::QueueFull { .. } => "rate_limit_error",
            Self::Draining | Self::Loading => "service_unavailable",
            Self::Internal(_) => "server_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidField { param, .. } => Some(param),
            Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The OpenAI-style body `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                r#type: self.error_type().to_string(),
                param: self.param().map(str::to_string),
                code: self.label().to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    pub param: Option<String>,
    pub code: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            // nginx's "client closed request": never seen by the client, only in logs and metrics
            Self::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining | Self::Loading => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Protocol(s) => StatusCode::from_u16(*s).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Self::QueueFull { retry_after_s, .. } = self {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_s)));
        }
        if let Self::MethodNotAllowed { allow, .. } = self
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            resp.insert_header((header::ALLOW, v));
        }
        if let Self::Unauthorized = self {
            resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Self::Draining = self {
            // A draining pod has left the Service's endpoints: the client's retry (the OpenAI SDKs retry 503)
            // must open a new connection, which reaches a pod that serves.
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            resp.force_close();
        }
        resp.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_names_the_field_in_param_and_is_a_400() {
        let e = ApiError::field("temperature", "temperature must be in [0, 2], got 5");
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b.error.param.as_deref(), Some("temperature"));
        assert_eq!(b.error.code, "invalid_value");
        assert_eq!(b.error.r#type, "invalid_request_error");
        assert!(b.error.message.contains("[0, 2]"));
    }

    #[test]
    fn queue_full_is_a_429_with_retry_after() {
        let resp = ApiError::QueueFull {
            queued: 9,
            retry_after_s: 3,
        }
        .error_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }

    #[test]
    fn every_variant_has_a_distinct_label() {
        let all = [
            ApiError::field("a", "b"),
            ApiError::MalformedJson(String::new()),
            ApiError::ModelNotFound(String::new()),
            ApiError::Unauthorized,
            ApiError::QueueFull {
                queued: 0,
                retry_after_s: 1,
            },
            ApiError::Draining,
            ApiError::Loading,
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed {
                method: String::new(),
                path: String::new(),
                allow: String::new(),
            },
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::PayloadTooLarge(0),
            ApiError::ClientGone,
            ApiError::Internal(String::new()),
        ];
        let mut labels: Vec<_> = all.iter().map(ApiError::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }

    #[test]
    fn unknown_model_is_a_404_naming_model() {
        let e = ApiError::ModelNotFound("gpt-9".into());
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(e.body().error.param.as_deref(), Some("model"));
        assert_eq!(e.body().error.code, "model_not_found");
    }
}
