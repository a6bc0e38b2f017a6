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
