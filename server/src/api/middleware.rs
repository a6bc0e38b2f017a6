//! actix middleware of the serving app: errors in the OpenAI JSON shape, and connection closing while draining.

use actix_web::web;

use super::ApiError;
use super::handlers::AppState;
use crate::engine::EngineHandle;

/// Every error answer is OpenAI-shaped JSON, including the ones actix writes itself (an oversized body's 413,
/// an unreadable body's 400).
pub fn errors_as_json<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>> + use<S>
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let fut = srv.call(req);
    async move {
        let res = fut.await?;
        let status = res.status();
        let is_json = res
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !status.is_client_error() && !status.is_server_error() || is_json {
            return Ok(res);
        }
        let message = match res.response().error() {
            Some(e) => e.to_string(),
            None => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        let err = match status {
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            }
            s if s.is_client_error() => ApiError::MalformedJson(message),
            _ => ApiError::Internal(message),
        };
        let (req, old) = res.into_parts();
        let mut new = actix_web::ResponseError::error_response(&err);
        *new.status_mut() = old.status();
        for (k, v) in old.headers() {
            if k != actix_web::http::header::CONTENT_TYPE
                && k != actix_web::http::header::CONTENT_LENGTH
            {
                new.headers_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(actix_web::dev::ServiceResponse::new(req, new))
    }
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// While draining, every response closes its connection: clients holding a keep-alive connection to this pod
/// (which has left the Service's endpoints) reconnect, through the Service, to a pod that serves.
pub fn close_connections_while_draining<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>> + use<S>
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let fut = srv.call(req);
    async move {
        let mut res = fut.await?;
        let draining = state
            .as_ref()
            .and_then(|s| s.engine.get())
            .is_some_and(EngineHandle::is_draining);
        if draining {
            res.response_mut()
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
        Ok(res)
    }
}

/// The `x-request-id` of a request: the client's own (OpenAI's SDKs and most gateways send one) when it is 1 to
/// 128 characters of `[A-Za-z0-9._:/+=-]`, else one generated here. Stored in the request's extensions for the
/// handlers' log lines and echoed on every response, errors included, so a client's report finds the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Header carrying [`RequestId`], in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl RequestId {
    /// The client's id when acceptable, else a fresh random one.
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some(v)
                if (1..=128).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(&b)) =>
            {
                Self(v.to_owned())
            }
            _ => Self(format!("req-{:016x}", rand::random::<u64>())),
        }
    }

    /// The id of a request that went through [`request_id`] (empty when called outside it, e.g. in a unit test).
    pub fn of(req: &actix_web::HttpRequest) -> String {
        use actix_web::HttpMessage;
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default()
    }
}

/// Outermost middleware: assigns the [`RequestId`], echoes it, and writes one access-log line per request
/// (`info` for the API, `debug` for probes and scrapes, which come every few seconds).
pub fn request_id<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>> + use<S>
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    use actix_web::HttpMessage;
    let id = RequestId::from_header(
        req.headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(id.clone());
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let started = std::time::Instant::now();
    let fut = srv.call(req);
    async move {
        let mut res = fut.await?;
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id.0) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(REQUEST_ID_HEADER),
                v,
            );
        }
        let status = res.status().as_u16();
        let ms = started.elapsed().as_millis() as u64;
        if path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize" {
            tracing::info!(x_request_id = %id.0, %method, %path, status, ms, "http");
        } else {
            tracing::debug!(x_request_id = %id.0, %method, %path, status, ms, "http");
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn a_clients_request_id_is_kept_when_sane_and_replaced_otherwise() {
        assert_eq!(
            RequestId::from_header(Some("abc-123_x.y:z")).0,
            "abc-123_x.y:z"
        );
        assert_eq!(RequestId::from_header(Some(" padded ")).0, "padded");
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some("new\nline"),
            Some(&*"x".repeat(129)),
        ] {
            let got = RequestId::from_header(bad).0;
            assert!(
                got.starts_with("req-") && got.len() == 20,
                "{bad:?} -> {got}"
            );
        }
        assert_ne!(RequestId::from_header(None), RequestId::from_header(None));
    }
}
