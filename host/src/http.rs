//! HTTP responses and what a request carries from accept to the route
//! table. Every part of the HTTP wing (accept, routes, the dashboard)
//! answers with these, so error bodies have one shape:
//! `{"error": code, "message": text, ...}`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::{json, Value};

use crate::codes::HttpCode;

/// HTTP response with a fully buffered body.
pub type HttpResponse = Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

pub(crate) fn error_response(
    status: StatusCode,
    code: HttpCode,
    message: &str,
    extra: Value,
) -> HttpResponse {
    let mut body = json!({"error": code.as_str(), "message": message});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    json_response(status, &body)
}

/// An error response with the code also in `X-Error-Code` (what the
/// published clients read on a refused handshake).
pub(crate) fn coded_error(status: StatusCode, code: HttpCode, message: &str) -> HttpResponse {
    // Limits (429, 503) pass; a refusal of who you are does not.
    let retryable = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    let mut response = error_response(
        status,
        code,
        message,
        json!({"code": code.as_str(), "retryable": retryable}),
    );
    response.headers_mut().insert(
        "x-error-code",
        header::HeaderValue::from_static(code.as_str()),
    );
    response
}

/// The client address of a request (attached at accept).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Something a connection holds while it lives (the per-IP slot taken at
/// accept): attached to the request, and taken by a WebSocket upgrade so
/// it is released when the socket closes rather than when the upgrade
/// request is answered.
#[derive(Clone)]
pub struct ConnectionGuard(
    // Never read: holding it is the point, dropping it releases the slot.
    #[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>,
);

impl ConnectionGuard {
    /// A guard holding `held` until the connection ends.
    pub fn new(held: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        Self(held)
    }

    /// Takes the guard attached to `request`, if any.
    pub fn take<B>(request: &mut hyper::Request<B>) -> Option<Self> {
        request.extensions_mut().remove::<Self>()
    }
}
