//! What a browser gets from the WebSocket port besides `/ws`: the chat page
//! at `/` (static files compiled into the binary, no CDN, a strict
//! Content-Security-Policy), the JavaScript client at `/switchboard.js`, and
//! `GET /servers`, the servers with room as CORS-enabled JSON.
//!
//! A browser cannot read the status or body of a refused WebSocket
//! handshake, so the 503 at the cap (with its list of alternatives) never
//! reaches a page. `/servers` answers the same question over plain HTTP,
//! which the cap does not apply to: the JS client asks it when a connection
//! cannot be opened, and tries the servers listed, in order.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::directory::ServerInfo;
use crate::listen::http::{self, Body};
use crate::state::State;

/// The page, its script and style, and the client module it imports.
const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");
const CLIENT_JS: &str = include_str!("../../clients/js/switchboard.js");

const JS: &str = "text/javascript; charset=utf-8";

/// Whether `path` is one of the paths this module answers.
pub fn serves(path: &str) -> bool {
    matches!(
        path,
        "/" | "/index.html"
            | "/app.js"
            | "/app.css"
            | "/switchboard.js"
            | "/servers"
            | "/favicon.ico"
    )
}

/// The answer for a path [`serves`] accepted; `headers` are the request's.
pub fn respond(path: &str, headers: &HeaderMap, state: &State) -> Response<Body> {
    match path {
        "/" | "/index.html" => page(headers, state),
        "/app.js" => asset(JS, APP_JS),
        "/app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "/switchboard.js" => asset(JS, CLIENT_JS),
        "/favicon.ico" => http::respond(StatusCode::NO_CONTENT, "image/x-icon", ""),
        _ => servers(headers, state),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut resp = http::respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The address the browser reached this server by (its `Host`), when it is
/// a plain `host:port` (anything else is not echoed into headers).
fn own_address(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    plain_address(host).then(|| host.to_owned())
}

/// A `host:port` with nothing that could break out of a header value.
fn plain_address(addr: &str) -> bool {
    !addr.is_empty()
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The Content-Security-Policy of the page: scripts, styles and images from
/// this server only, no inline code, and connections only to this server
/// and the servers with room (where the client may go when this one is full).
pub fn content_security_policy(own: Option<&str>, others: &[ServerInfo]) -> String {
    let mut connect = String::from("'self'");
    for addr in own.into_iter().chain(others.iter().map(|s| s.ws.as_str())) {
        if plain_address(addr) {
            for scheme in ["ws", "wss", "http", "https"] {
                connect.push_str(&format!(" {scheme}://{addr}"));
            }
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn page(headers: &HeaderMap, state: &State) -> Response<Body> {
    let csp = content_security_policy(
        own_address(headers).as_deref(),
        &state.directory.alternatives(),
    );
    let mut resp = asset("text/html; charset=utf-8", INDEX_HTML);
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The body of `GET /servers`.
#[derive(Serialize)]
struct ServersWithRoom<'a> {
    /// This server's id.
    server: &'a str,
    /// Servers with room, this one first when it has room, then the others
    /// least loaded first. `ws` is `host:port`; connect to `ws://<ws>/ws`.
    servers: Vec<ServerInfo>,
}

fn servers(headers: &HeaderMap, state: &State) -> Response<Body> {
    let mut list = Vec::new();
    let connections = state.metrics.connections.get().max(0) as u64;
    if state.cap.permits.available_permits() > 0
        && let Some(ws) = own_address(headers)
    {
        list.push(ServerInfo {
            id: state.identity.server_id.clone(),
            ws,
            tcp: String::new(),
            connections,
            cap: state.cap.max_connections as u64,
        });
    }
    list.extend(state.directory.alternatives().iter().cloned());
    let body = ServersWithRoom {
        server: &state.identity.server_id,
        servers: list,
    };
    let mut resp = match serde_json::to_value(&body) {
        Ok(v) => http::json(StatusCode::OK, v),
        Err(_) => http::respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n",
        ),
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_this_server_and_those_with_room_only() {
        let others = vec![ServerInfo {
            id: "b".into(),
            ws: "127.0.0.1:9002".into(),
            tcp: "127.0.0.1:9102".into(),
            connections: 1,
            cap: 10,
        }];
        let csp = content_security_policy(Some("127.0.0.1:9001"), &others);
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("ws://127.0.0.1:9001"), "{csp}");
        assert!(csp.contains("http://127.0.0.1:9002"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        // An address with odd characters is not written into the header.
        let bad = vec![ServerInfo {
            ws: "x; script-src *".into(),
            ..others[0].clone()
        }];
        let csp = content_security_policy(None, &bad);
        assert!(!csp.contains("script-src *"), "{csp}");
    }

    #[test]
    fn only_plain_hosts_are_echoed() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9001"));
        assert_eq!(own_address(&h).as_deref(), Some("127.0.0.1:9001"));
        h.insert(header::HOST, HeaderValue::from_static("a b"));
        assert_eq!(own_address(&h), None);
    }
}
