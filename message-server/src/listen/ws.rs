//! The WebSocket port: HTTP/1.1 with hyper, where `GET /ws` upgrades to a
//! session, `GET /echo` (with `--echo`) to an echo loop for conformance
//! tests, and `/healthz` and `/metrics` answer plainly.
//!
//! The upgrade is checked by hand (RFC 6455 section 4.2.1) so that refusals
//! are real HTTP answers: 503 with alternatives at the cap, 400 for a
//! malformed upgrade. After the 101 the socket becomes a tungstenite stream
//! over [`Coalesce`] with small buffers and the message limits from the
//! configuration, and the session is spawned as its own task.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::task::TaskTracker;

use super::ClientIo;
use super::http::{self, Body};
use crate::coalesce::Coalesce;
use crate::conn::{self, Close, WsConn};
use crate::session::{self, HandshakeLogin};
use crate::state::{Admission, Refusal, State};

/// tungstenite's read buffer: it is kept for the connection's life, so it
/// is small; a larger frame gets its whole length reserved while it is
/// read, and the socket is read in [`crate::coalesce::READ_CHUNK`]s below
/// it, so a burst still costs one `read`.
const WS_READ_BUFFER: usize = 128;

/// The WebSocket settings every connection gets: a small read buffer (the
/// defaults cost ~128 KiB per idle connection), no write buffer in
/// tungstenite (each frame goes straight down to [`Coalesce`], which
/// gathers a batch into one `write` and holds nothing once it is flushed),
/// the configured size limits. `max_write_buffer_size` bounds what
/// tungstenite holds while the socket does not take more.
pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message.saturating_mul(4).max(64 * 1024))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Accepts connections on the WebSocket port until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tls_config::TlsAcceptor>,
    tracker: TaskTracker,
) {
    let t = tracker.clone();
    super::accept_loop(
        listener,
        "ws",
        state,
        tls,
        tracker,
        move |io, peer, state| serve(io, peer, state, t.clone()),
    )
    .await;
}

async fn serve(stream: ClientIo, peer: SocketAddr, state: Arc<State>, tracker: TaskTracker) {
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |req| {
        let state = Arc::clone(&svc_state);
        let tracker = tracker.clone();
        async move { Ok::<_, Infallible>(route(req, peer, state, tracker)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.handshake_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "http connection ended with an error");
        },
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
    tracker: TaskTracker,
) -> Response<Body> {
    let path = req.uri().path();
    if req.method() != Method::GET {
        return http::respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served here\n",
        );
    }
    match path {
        "/healthz" => http::health(&state),
        "/metrics" => http::metrics(&state),
        "/ws" => upgrade(req, peer, state, tracker, Endpoint::Chat),
        "/echo" if state.http.echo => upgrade(req, peer, state, tracker, Endpoint::Echo),
        p if crate::web::serves(p) => crate::web::respond(p, req.headers(), &state),
        _ => http::respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; clients connect to /ws\n",
        ),
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Chat,
    Echo,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
    tracker: TaskTracker,
    endpoint: Endpoint,
) -> Response<Body> {
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return http::respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade\n",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut resp = http::respond(
            StatusCode::UPGRADE_REQUIRED,
            "text/plain",
            "WebSocket version 13 only\n",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return http::respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let login = handshake_login(&req);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = state.http.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|o| {
                state
                    .http
                    .allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
        if !allowed {
            return http::respond(StatusCode::FORBIDDEN, "text/plain", "origin not allowed\n");
        }
    }
    let admission = match state.admit(peer.ip()) {
        Ok(a) => a,
        Err(Refusal::Full) => {
            state.metrics.refused_full.inc();
            return http::full(&state);
        }
        Err(Refusal::TooManyFromAddress) => {
            return http::respond(
                StatusCode::TOO_MANY_REQUESTS,
                "text/plain",
                "too many connections from your address\n",
            );
        }
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return http::respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "internal error\n",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // A short task waits for the upgrade, then spawns the session as a task
    // of its own: the long-lived future carries nothing of the handshake.
    let sessions = tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(%peer, error = %e, "upgrade failed"),
        };
        // Back to our own socket: hyper's boxed wrapper is not kept.
        let Ok(parts) = upgraded.downcast::<TokioIo<ClientIo>>() else {
            return tracing::warn!(%peer, "upgraded connection of an unexpected type");
        };
        let io = Coalesce::new(parts.io.into_inner(), &parts.read_buf);
        let config = ws_config(state.limits.max_message);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        match endpoint {
            Endpoint::Chat => {
                let session = session::run(WsConn::new(ws), state, peer, login, admission);
                tracing::trace!(bytes = std::mem::size_of_val(&session), "session future");
                sessions.spawn(session)
            }
            Endpoint::Echo => sessions.spawn(echo(ws, state, admission)),
        };
    });
    let mut resp = http::respond(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    resp.headers_mut().remove(header::CONTENT_TYPE);
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// `user`, `token` and `device` from the query, or a bearer token from the
/// `Authorization` header.
fn handshake_login(req: &Request<Incoming>) -> Option<Box<HandshakeLogin>> {
    let mut login = HandshakeLogin::default();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "user" => login.user = v.into_owned(),
            "token" => login.token = Some(v.into_owned()),
            "device" => login.device = Some(v.into_owned()),
            _ => {}
        }
    }
    if login.token.is_none() {
        login.token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
    }
    (!login.user.is_empty()).then(|| Box::new(login))
}

/// The echo endpoint: every text or binary message comes back; limits and
/// close codes are those of `/ws`.
async fn echo<S>(mut ws: WebSocketStream<S>, state: Arc<State>, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    state.metrics.connections.inc();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                conn::send_ws_close(&mut ws, &Close::new(conn::code::GOING_AWAY, None, "server shutting down")).await;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    let _ = ws.flush().await;
                    // The answer to the peer's close waits below (see `WsConn::flush`).
                    let _ = tokio::io::AsyncWriteExt::flush(ws.get_mut()).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if let Some(close) = conn::close_for_ws_error(&e) {
                        conn::send_ws_close(&mut ws, &close).await;
                    }
                    break;
                }
            }
        }
    }
    state.metrics.connections.dec();
    drop(admission);
}
