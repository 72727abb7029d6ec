//! The live dashboard: a static page served at `GET /`, and the two admin
//! JSON endpoints it polls besides `GET /plugins`.
//!
//! | route | what | auth |
//! |---|---|---|
//! | `GET /`, `GET /dashboard/{file}` | the page: HTML, CSS, ES modules | none: static, holds no data |
//! | `GET /admin/views` | every view: owner, definition, entities, subscribers | admin token |
//! | `GET /admin/figures` | cumulative counters (connections, events, frames, bytes, conflated frames, slow-consumer closes) | admin token |
//!
//! The assets are compiled into the binary (`include_str!`), so a host
//! serves its own dashboard with no files beside it and no network: there
//! is no build step and no CDN, and the page's Content-Security-Policy
//! forbids loading anything from elsewhere. Everything the page shows
//! comes from the admin routes (with the admin token the operator pastes,
//! or passes once as `#token=`/`?token=`, sent as `Authorization: Bearer`)
//! and, for the view inspector, from an ordinary WebSocket subscription
//! speaking the same protocol as every client (the admin token is accepted
//! as its `hs_token`; see [`crate::auth::Auth::subscriber_or_admin`]).
//!
//! Why these endpoints are cheap enough to poll every second: `/admin/views`
//! is one engine command that reads counts (no entity is copied or
//! serialized), and `/admin/figures` does not reach the engine at all; it
//! reads the Prometheus recorder the host keeps anyway. Rates are computed
//! by the page from successive totals, so the host keeps no per-viewer
//! state.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::json;

use crate::codes::HttpCode;
use crate::http::{error_response, json_response, HttpResponse};
use crate::shared::Shared;

/// The page's files: URL path, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../assets/dashboard/index.html"),
    ),
    (
        "/dashboard/style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard/style.css"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/app.js"),
    ),
    (
        "/dashboard/api.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/api.js"),
    ),
    (
        "/dashboard/charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/charts.js"),
    ),
    (
        "/dashboard/inspector.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/inspector.js"),
    ),
    (
        "/dashboard/table.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/table.js"),
    ),
];

/// Nothing but this host: scripts, styles, fetches and the WebSocket
/// ('self' covers ws:// and wss:// to the same host).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's files.
pub(crate) fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|(p, _, _)| *p == path) || path == "/index.html"
}

/// The dashboard file at `path`; 404 for an unknown file under
/// `/dashboard/`.
pub(crate) fn asset(path: &str) -> HttpResponse {
    let path = if path == "/index.html" { "/" } else { path };
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            HttpCode::NotFound,
            &format!("no dashboard file {path}"),
            json!({}),
        );
    };
    Response::builder()
        .header(header::CONTENT_TYPE, *content_type)
        // Assets change with the binary; revalidating costs nothing here.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

/// `GET /admin/views`.
pub(crate) async fn views(shared: &Shared) -> HttpResponse {
    let views = shared.engine.views().await;
    json_response(
        StatusCode::OK,
        &serde_json::to_value(views).expect("view summaries serialize"),
    )
}

/// `GET /admin/figures`: open WebSocket connections and cumulative totals,
/// with the time they were read (`at`, Unix milliseconds).
pub(crate) fn figures(shared: &Shared) -> HttpResponse {
    let metrics = crate::metrics::get();
    let body = json!({
        "at": crate::plugins::unix_millis(),
        "connections": shared.open_connections(),
        "events": metrics.events_ingested.get(),
        "frames": metrics.frames_sent.get(),
        "bytes": metrics.bytes_sent.get(),
        "conflated": metrics.frames_conflated.get(),
        "slowConsumerCloses": metrics.slow_consumer_disconnects.get(),
    });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_unknown_files_are_404() {
        for (path, content_type, _) in ASSETS {
            let response = asset(path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
        }
        assert_eq!(asset("/dashboard/nope.js").status(), StatusCode::NOT_FOUND);
        assert!(is_asset("/") && is_asset("/dashboard/app.js") && !is_asset("/plugins"));
    }
}
