//! The admin HTTP endpoint (hyper, HTTP/1.1):
//!
//! - `GET /healthz`: `{"status":"ok","links":N,"redis":"up"}` with 200, or
//!   `"status":"degraded"`, `"redis":"down"` with 503 when Redis does not
//!   answer within a second (links are still routed then; purges wait).
//! - `GET /servers`: a JSON array, one object per server known in the
//!   registry or linked here: `id epoch ws tcp connections cap link
//!   seen_ms_ago`. Registry fields are `null` when unknown (a linked server
//!   with no entry, or Redis unreachable).
//! - `GET /metrics`: this relay's [`crate::Metrics`] in OpenMetrics text.
//! - `GET /purges`: the last purges, newest first: `server epoch sessions
//!   at_ms time_to_purge_ms cause`.
//! - `GET /`: the dashboard (static files compiled in, a strict
//!   Content-Security-Policy), which polls `/servers`, `/metrics` and
//!   `/purges` every second.
//!
//! Anything else is 404 (405 for another method on a known path).
//! Connections are capped and have a header-read timeout; at shutdown they
//! are closed gracefully.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::Ctx;
use crate::registry::{self, Entry};

/// Most admin connections at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time in-flight requests get at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time Redis gets to answer a health check.
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(1);

const JSON: &str = "application/json";
/// The dashboard's files.
const DASHBOARD_HTML: &str = include_str!("../web/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../web/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../web/dashboard.css");
/// Its policy: its own script and style, requests to this port only.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves admin requests until shutdown.
pub(crate) async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut acceptor = entry::accept::Acceptor::new(listener, "admin");
    while let Some((stream, peer)) = acceptor.next(&ctx.shutdown).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection refused: too many");
            continue;
        };
        let ctx = ctx.clone();
        ctx.tracker.clone().spawn(async move {
            let _slot = slot;
            let service = service_fn(|req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = ctx.shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_TIMEOUT, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(error) = result {
                debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    }
}

async fn respond(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/healthz"
            | "/servers"
            | "/metrics"
            | "/purges"
            | "/"
            | "/dashboard.js"
            | "/dashboard.css"
            | "/favicon.ico"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/healthz" => healthz(ctx).await,
        "/servers" => servers(ctx).await,
        "/purges" => json(StatusCode::OK, &ctx.purge_log.recent()),
        "/" => page(DASHBOARD_HTML, "text/html; charset=utf-8"),
        "/dashboard.js" => page(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "/dashboard.css" => page(DASHBOARD_CSS, "text/css; charset=utf-8"),
        "/favicon.ico" => body(StatusCode::NO_CONTENT, "image/x-icon", String::new()),
        _ => body(StatusCode::OK, OPENMETRICS, ctx.metrics.render()),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    links: usize,
    redis: &'static str,
}

async fn healthz(ctx: &Ctx) -> Response<Full<Bytes>> {
    let redis_up = matches!(
        tokio::time::timeout(HEALTH_PING_TIMEOUT, registry::ping(&ctx.redis)).await,
        Ok(Ok(()))
    );
    let health = Health {
        status: if redis_up { "ok" } else { "degraded" },
        links: ctx.routes.len(),
        redis: if redis_up { "up" } else { "down" },
    };
    let status = if redis_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &health)
}

/// One row of `/servers`.
#[derive(Serialize, Debug, Default)]
struct ServerView {
    id: String,
    epoch: Option<u64>,
    ws: Option<String>,
    tcp: Option<String>,
    connections: Option<u64>,
    cap: Option<u64>,
    link: &'static str,
    seen_ms_ago: Option<u64>,
}

async fn servers(ctx: &Ctx) -> Response<Full<Bytes>> {
    let mut rows: BTreeMap<String, ServerView> = BTreeMap::new();
    match registry::read_all(&ctx.redis).await {
        Ok(entries) => {
            let now = entry::now_ms();
            for (id, entry) in entries {
                // An id whose entry expired is not a known server any more
                // (the sweep removes it); an entry from elsewhere is skipped.
                let Some(entry) = entry else { continue };
                if shared::ids::check_name(&id).is_err() {
                    continue;
                }
                rows.insert(id.clone(), view(id, &entry, now));
            }
        }
        Err(error) => {
            ctx.metrics.redis_error();
            debug!(%error, "registry unreadable for /servers; showing links only");
        }
    }
    for (id, route) in ctx.routes.snapshot() {
        let row = rows.entry(id.clone()).or_insert_with(|| ServerView {
            id,
            epoch: Some(route.epoch),
            ws: Some(route.addrs.ws.clone()).filter(|s| !s.is_empty()),
            tcp: Some(route.addrs.tcp.clone()).filter(|s| !s.is_empty()),
            ..ServerView::default()
        });
        row.link = "up";
    }
    let rows: Vec<ServerView> = rows.into_values().collect();
    json(StatusCode::OK, &rows)
}

fn view(id: String, entry: &Entry, now_ms: u64) -> ServerView {
    ServerView {
        id,
        epoch: entry.epoch,
        ws: entry.ws.clone(),
        tcp: entry.tcp.clone(),
        connections: entry.conns,
        cap: entry.cap,
        link: "down",
        seen_ms_ago: entry.seen_ms_ago(now_ms),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(s) => body(status, JSON, s),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

fn page(content: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = body(StatusCode::OK, content_type, content.to_owned());
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", s.to_owned())
}

fn body(status: StatusCode, content_type: &'static str, s: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(s)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
