//! The plain-HTTP answers of the WebSocket port: `/healthz`, `/metrics`, the
//! 503 at the cap, and errors for requests that are not a WebSocket upgrade.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::json;

use crate::state::State;

/// Body type of every response on the port.
pub type Body = Full<Bytes>;

/// A response with a status, content type and body.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

/// `/healthz`: 200 `ok` when Redis and at least one relay link are up,
/// 503 `degraded` otherwise (local traffic is still served).
pub fn health(state: &State) -> Response<Body> {
    let links = state.links.up();
    let redis_up = state.metrics.redis_up.get() > 0;
    let ok = redis_up && links > 0;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "server": state.identity.server_id,
        "epoch": state.identity.epoch,
        "relay_links": links,
        "relays": state.identity.relays,
        "redis": if redis_up { "up" } else { "down" },
        "connections": state.metrics.connections.get(),
        "sessions": state.metrics.sessions.get(),
        "cap": state.cap.max_connections,
    });
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// `/metrics`: Prometheus text.
pub fn metrics(state: &State) -> Response<Body> {
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        state.metrics.render(),
    )
}

/// The 503 at the cap, naming servers with room.
pub fn full(state: &State) -> Response<Body> {
    let alternatives = state.directory.alternatives();
    let body = json!({
        "error": "full",
        "message": format!("server {} is at its cap of {} connections; try another", state.identity.server_id, state.cap.max_connections),
        "servers": *alternatives,
    });
    let mut resp = json(StatusCode::SERVICE_UNAVAILABLE, body);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
}
