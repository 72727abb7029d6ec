//! The one listening port: WebSocket upgrades on any path, and the HTTP API.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /readyz` | `{"status":"ready"}` (the port opens after the log is replayed) |
//! | `GET /status` | storage mode and the event log: records, retained window, disk bytes, checkpoint |
//! | `GET /plugins` | every plugin file: name, version, file, entities, views, streams, state, last error |
//! | `POST /ingest/{stream}` | NDJSON or a JSON array of event objects; all or nothing |
//! | `POST /auth/token` | a subscriber token for `Authorization: Bearer <publishable key>` |
//! | `POST /plugins/{name}/reproject` | rebuild the plugin's entities from the event log (202; progress in `GET /plugins`) |
//! | `GET /metrics` | every metric of [`crate::metrics`], OpenMetrics text |
//! | `GET /`, `GET /dashboard/{file}` | the dashboard page ([`crate::dashboard`]) |
//! | `GET /admin/views`, `GET /admin/figures` | what the dashboard polls |
//! | `GET /admin/dead-letters[?format=ndjson]` | events the plugins refused or crashed on ([`crate::dead_letters`]) |
//!
//! Errors are JSON `{"error": code, "message": text, ...}` with a specific
//! status: 400 malformed body (naming the line), 404 unknown stream or
//! route, 413 body over the limit, 422 projector error (naming the plugin),
//! 503 projector timeout or stuck plugin (naming the plugin), 503
//! `storage-unavailable` when the event log cannot be written.
//! Upgrades over `max_connections` get 503 `connection-limit-exceeded`;
//! connections over the per-IP cap are answered 429
//! `ip-connection-limit-exceeded` before reaching this module
//! ([`crate::accept`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::codes::HttpCode;
use crate::engine::IngestError;
use crate::http::{coded_error, error_response, json_response, HttpResponse};
use crate::ids::Seq;
use crate::ingest::IngestBody;
use crate::shared::Shared;

/// `POST /plugins/{name}/reproject`: 202 once started; progress in `GET /plugins`.
async fn reproject(name: &str, shared: &Shared) -> HttpResponse {
    use crate::engine::ReprojectError;
    match shared.engine.reproject(name).await {
        Ok(()) => json_response(
            StatusCode::ACCEPTED,
            &json!({"reprojection": "started", "plugin": name}),
        ),
        Err(err) => {
            let (status, code) = match &err {
                ReprojectError::UnknownPlugin(_) => {
                    (StatusCode::NOT_FOUND, HttpCode::UnknownPlugin)
                }
                ReprojectError::InMemory => (StatusCode::CONFLICT, HttpCode::NoEventLog),
                ReprojectError::LogIncomplete(_) => (StatusCode::CONFLICT, HttpCode::LogIncomplete),
                ReprojectError::AlreadyRunning(_) => {
                    (StatusCode::CONFLICT, HttpCode::ReprojectionRunning)
                }
                ReprojectError::Stuck(_) => (StatusCode::CONFLICT, HttpCode::PluginStuck),
                ReprojectError::Failed(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    HttpCode::ReprojectionFailed,
                ),
            };
            error_response(status, code, &err.to_string(), json!({"plugin": name}))
        }
    }
}

/// Bodies up to this size are split into events on the async worker as
/// it is; bigger ones first hand the worker's other tasks to another thread.
const INLINE_PARSE_BYTES: usize = 16 << 10;

/// Routes one HTTP request (upgrades included).
pub async fn handle(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<HttpResponse, Infallible> {
    if hyper_tungstenite::is_upgrade_request(&request) {
        return Ok(upgrade(&mut request, shared));
    }
    let path = request.uri().path().to_owned();
    let admin_route = matches!(
        path.as_str(),
        "/plugins" | "/metrics" | "/status" | "/sources"
    ) || path.starts_with("/admin/")
        || (path.starts_with("/plugins/") && path.ends_with("/reproject"));
    if admin_route {
        if let Err(err) = shared.auth.admin(bearer(&request)) {
            crate::metrics::get().auth_refused.inc();
            return Ok(coded_error(
                StatusCode::UNAUTHORIZED,
                err.code(),
                &err.to_string(),
            ));
        }
    }
    let response = match (request.method(), path.as_str()) {
        // A panicked engine or log writer: the process is about to exit.
        (&Method::GET, "/healthz" | "/readyz") if crate::supervise::failure().is_some() => {
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                HttpCode::HostFailed,
                crate::supervise::failure().unwrap_or_default(),
                json!({"status": "failed"}),
            )
        }
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        // Asked of the log: a single host opens its port only once its log
        // has been replayed (ready unless the log cannot be written); a
        // cluster member at once, ready once it caught up.
        (&Method::GET, "/readyz") => {
            let readiness = shared.log.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, &readiness.body)
        }
        (&Method::GET, "/status") => {
            json_response(StatusCode::OK, &shared.log.status(&shared.engine).await)
        }
        (&Method::GET, "/sources") => {
            json_response(StatusCode::OK, &crate::sources::status(&shared.sources))
        }
        (&Method::GET, "/plugins") => {
            let reports = shared.engine.reports().await;
            json_response(
                StatusCode::OK,
                &serde_json::to_value(reports).expect("reports serialize"),
            )
        }
        (&Method::GET, p) if crate::dashboard::is_asset(p) || p.starts_with("/dashboard/") => {
            crate::dashboard::asset(p)
        }
        (&Method::GET, "/admin/views") => crate::dashboard::views(&shared).await,
        (&Method::GET, "/admin/dead-letters") => {
            let letters = shared.engine.dead_letters().await;
            if request.uri().query() == Some("format=ndjson") {
                let mut text = String::new();
                for letter in &letters {
                    text.push_str(&serde_json::to_string(letter).expect("letters serialize"));
                    text.push('\n');
                }
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/x-ndjson")
                    .body(Full::new(Bytes::from(text)))
                    .expect("static response parts are valid")
            } else {
                json_response(StatusCode::OK, &json!({"dead_letters": letters}))
            }
        }
        (&Method::GET, "/admin/figures") => crate::dashboard::figures(&shared),
        (&Method::GET, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(crate::metrics::get().render())))
            .expect("static response parts are valid"),
        (&Method::POST, "/auth/token") => match shared.auth.exchange(bearer(&request)) {
            Ok((token, expires_at)) => json_response(
                StatusCode::OK,
                &json!({"token": token, "expiresAt": expires_at}),
            ),
            Err(err) => {
                crate::metrics::get().auth_refused.inc();
                coded_error(StatusCode::UNAUTHORIZED, err.code(), &err.to_string())
            }
        },
        (&Method::POST, p) if p.starts_with("/plugins/") && p.ends_with("/reproject") => {
            let name = &p["/plugins/".len()..p.len() - "/reproject".len()];
            reproject(name, &shared).await
        }
        (&Method::POST, p) if p.starts_with("/ingest/") => {
            let stream = p.trim_start_matches("/ingest/").to_owned();
            shared
                .shutdown
                .track(ingest(request, &stream, &shared))
                .await
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/status"
            | "/sources"
            | "/plugins"
            | "/metrics"
            | "/"
            | "/admin/views"
            | "/admin/figures"
            | "/admin/dead-letters",
        ) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            HttpCode::MethodNotAllowed,
            "use GET",
            json!({}),
        ),
        (_, p) if p.starts_with("/ingest/") => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            HttpCode::MethodNotAllowed,
            "use POST",
            json!({}),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            HttpCode::NotFound,
            &format!("no route {path}"),
            json!({}),
        ),
    };
    Ok(response)
}

/// 429 `rate-limit-exceeded` with `Retry-After`.
fn rate_limited(retry_after: std::time::Duration, what: &str) -> HttpResponse {
    crate::metrics::get().rate_limited.inc();
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = coded_error(
        StatusCode::TOO_MANY_REQUESTS,
        HttpCode::RateLimitExceeded,
        &format!("too many {what}; retry in {seconds} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

/// Who a request counts against for rate limits: its credential, else its
/// address.
fn client_of<B>(request: &Request<B>) -> String {
    bearer(request).map(str::to_owned).unwrap_or_else(|| {
        request
            .extensions()
            .get::<crate::http::PeerAddr>()
            .map(|peer| peer.0.ip().to_string())
            .unwrap_or_default()
    })
}

fn upgrade(request: &mut Request<Incoming>, shared: Arc<Shared>) -> HttpResponse {
    if let Some(limiter) = &shared.auth.connection_rate {
        let address = request
            .extensions()
            .get::<crate::http::PeerAddr>()
            .map(|peer| peer.0.ip().to_string())
            .unwrap_or_default();
        if let Err(wait) = limiter.check(&address) {
            return rate_limited(wait, "connections from this address");
        }
    }
    let Some(slot) = shared.reserve_connection() else {
        crate::metrics::get().connections_refused.inc();
        tracing::warn!(
            limit = shared.config.max_connections,
            "connection refused: limit reached"
        );
        return coded_error(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::ConnectionLimitExceeded,
            &format!(
                "this server accepts at most {} connections",
                shared.config.max_connections
            ),
        );
    };
    // Small buffers keep idle connections cheap: client messages are small
    // (read in 256-byte chunks: a subscribe fits one; a longer message
    // grows the buffer while it is read) and the writer flushes every
    // drain anyway. 256 instead of 1 KiB took 15,000 idle connections from
    // 6.41 to 5.62 KiB each (BENCHMARKS.md, "Memory per connection").
    let config = hyper_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(16 << 10)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !shared.auth.origin_allowed(origin) {
        crate::metrics::get().auth_refused.inc();
        return coded_error(
            StatusCode::FORBIDDEN,
            HttpCode::OriginNotAllowed,
            &format!("WebSockets from origin {origin:?} are not allowed here"),
        );
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !shared.auth.host_allowed(host) {
        crate::metrics::get().auth_refused.inc();
        return coded_error(
            StatusCode::FORBIDDEN,
            HttpCode::HostNotAllowed,
            &format!("this server does not answer to Host {host:?}"),
        );
    }
    let token = query_token(request).or_else(|| bearer(request).map(str::to_owned));
    let claims = match shared.auth.subscriber_or_admin(token.as_deref()) {
        Ok(claims) => claims,
        Err(err) => {
            crate::metrics::get().auth_refused.inc();
            return coded_error(StatusCode::UNAUTHORIZED, err.code(), &err.to_string());
        }
    };
    let ip_slot = crate::http::ConnectionGuard::take(request);
    match hyper_tungstenite::upgrade(request, Some(config)) {
        Ok((response, websocket)) => {
            let conn = shared.next_conn_id();
            let host = shared.clone();
            let connection = async move {
                if let Some(socket) =
                    crate::ws::close::finish_upgrade(websocket, &shared.config).await
                {
                    crate::ws::serve(socket, conn, shared, claims).await;
                }
                drop((slot, ip_slot));
            };
            tokio::spawn(host.shutdown.track(connection));
            response
        }
        Err(err) => error_response(
            StatusCode::BAD_REQUEST,
            HttpCode::BadUpgrade,
            &err.to_string(),
            json!({}),
        ),
    }
}

/// The `hs_token` query parameter.
fn query_token(request: &Request<Incoming>) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "hs_token").then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The `Authorization: Bearer` token.
fn bearer<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn ingest(request: Request<Incoming>, stream: &str, shared: &Shared) -> HttpResponse {
    if let Some(limiter) = &shared.auth.ingest_rate {
        if let Err(wait) = limiter.check(&client_of(&request)) {
            return rate_limited(wait, "ingest requests");
        }
    }
    match shared.auth.ingest(bearer(&request), stream) {
        Ok(()) => {}
        Err(crate::auth::IngestDenied::Unauthenticated(err)) => {
            crate::metrics::get().auth_refused.inc();
            return coded_error(StatusCode::UNAUTHORIZED, err.code(), &err.to_string());
        }
        Err(crate::auth::IngestDenied::Forbidden) => {
            crate::metrics::get().auth_refused.inc();
            return coded_error(
                StatusCode::FORBIDDEN,
                HttpCode::Forbidden,
                &format!("these credentials may not ingest into {stream:?}"),
            );
        }
    }
    // Bounds the memory of bodies being read and processed at once.
    let Some(_permit) = shared.ingest_permit().await else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::ShuttingDown,
            "the server is shutting down",
            json!({}),
        );
    };
    let limit = shared.config.max_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            HttpCode::BodyTooLarge,
            &format!("ingest bodies are limited to {limit} bytes"),
            json!({"limit": limit}),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return too_large();
    }
    // A body trickled in byte by byte would hold a permit (and memory)
    // forever: reading it is bounded in time as well as in size.
    let read = Limited::new(request.into_body(), limit).collect();
    let read = match shared.config.body_timeout {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(read) => read,
            Err(_) => {
                return error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    HttpCode::BodyTimeout,
                    &format!("the body was not received within {} s", limit.as_secs()),
                    json!({}),
                )
            }
        },
        None => read.await,
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                HttpCode::BodyReadFailed,
                &err.to_string(),
                json!({}),
            )
        }
    };
    // Small bodies parse in microseconds, on the worker. A big one is
    // split on this thread too, but with the worker's other tasks handed
    // to another thread first (`block_in_place`): a hop to a blocking
    // thread and back cost more than the split of a 1,000-event body
    // (BENCHMARKS.md, ninth session).
    // (`block_in_place` needs a multi-thread runtime, which `vista serve`
    // runs; a caller of `run` on a current-thread one parses inline.)
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let parsed = if body.len() <= INLINE_PARSE_BYTES || !multi_thread {
        IngestBody::parse(body)
    } else {
        tokio::task::block_in_place(move || IngestBody::parse(body))
    };
    let events = match parsed {
        Ok(events) => events,
        Err(malformed) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                HttpCode::MalformedEvent,
                &format!("line {}: {}", malformed.position, malformed.message),
                json!({"line": malformed.position}),
            )
        }
    };
    let events_len = events.len();
    if events.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            HttpCode::EmptyBody,
            "no events in the body",
            json!({}),
        );
    }
    match shared.ingest(stream, Arc::new(events)).await {
        Ok(done) => json_response(
            StatusCode::OK,
            // No `_seq` (a request that applied nothing) stays `""` on the wire.
            &json!({"accepted": done.accepted, "seq": done.seq.map_or_else(String::new, Seq::text)}),
        ),
        Err(err @ IngestError::UnknownStream(_)) => error_response(
            StatusCode::NOT_FOUND,
            HttpCode::UnknownStream,
            &err.to_string(),
            json!({"stream": stream}),
        ),
        Err(IngestError::Projector {
            plugin,
            position,
            message,
        }) => {
            tracing::warn!(%plugin, stream, position, "projector error: {message}");
            error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                HttpCode::ProjectorError,
                &format!("plugin {plugin:?} failed on event {position}: {message}"),
                json!({"plugin": plugin, "line": position}),
            )
        }
        Err(err @ IngestError::ProjectorTimeout { .. }) => {
            let IngestError::ProjectorTimeout { plugin, timeout_ms } = &err else {
                unreachable!()
            };
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                HttpCode::ProjectorTimeout,
                &err.to_string(),
                json!({"plugin": plugin, "timeout_ms": timeout_ms}),
            )
        }
        Err(IngestError::ProjectorCrashed {
            plugin,
            position,
            message,
            crash,
        }) => error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            HttpCode::ProjectorCrashed,
            &format!("plugin {plugin:?} crashed on event {position}: {message}; nothing of the request was applied, the projector was restarted"),
            json!({
                "plugin": plugin,
                "line": position,
                "signal": crash.signal_name(),
                "exit_code": crash.exit_code,
            }),
        ),
        Err(err @ IngestError::PluginCrashed { .. }) => {
            let IngestError::PluginCrashed { plugin } = &err else {
                unreachable!()
            };
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                HttpCode::PluginCrashed,
                &err.to_string(),
                json!({"plugin": plugin}),
            )
        }
        Err(err @ IngestError::PluginStuck { .. }) => {
            let IngestError::PluginStuck { plugin } = &err else {
                unreachable!()
            };
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                HttpCode::PluginStuck,
                &err.to_string(),
                json!({"plugin": plugin}),
            )
        }
        Err(err @ IngestError::StorageUnavailable(_)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::StorageUnavailable,
            &err.to_string(),
            json!({"retryable": true}),
        ),
        Err(err @ IngestError::ShuttingDown) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::ShuttingDown,
            &err.to_string(),
            json!({}),
        ),
        Err(err @ IngestError::HostPaused(_)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::HostPaused,
            &err.to_string(),
            json!({"retryable": true}),
        ),
        Err(err @ IngestError::LogUnavailable(_)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            HttpCode::LogUnavailable,
            &err.to_string(),
            json!({"retryable": true}),
        ),
        Err(err @ IngestError::TooLargeForLog { .. }) => {
            let IngestError::TooLargeForLog { max_payload } = &err else {
                unreachable!()
            };
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                HttpCode::BodyTooLarge,
                &err.to_string(),
                json!({"limit": max_payload}),
            )
        }
        Err(err @ IngestError::NotAppliedYet { .. }) => {
            let IngestError::NotAppliedYet { stream_seq } = &err else {
                unreachable!()
            };
            json_response(
                StatusCode::ACCEPTED,
                &json!({"accepted": events_len, "applied": false, "position": stream_seq, "message": err.to_string()}),
            )
        }
    }
}
