# shellcheck shell=bash
# Helpers shared by scripts/cluster, scripts/test and .ci/run. Source it; it
# sets ROOT (the repository root, found from this file's own location).

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
export ROOT

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# server_metric HOST:PORT NAME: the value of one metric on a message
# server's /metrics, as an integer; nothing when the server does not answer
# or has no such metric.
server_metric() {
    curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print int($2)}'
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (not root, and no sudo)"
    fi
}

# Installs redis-server with apt-get when it is not on PATH.
ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "redis-server is missing and there is no apt-get; install Redis 7 and retry"
    say "redis-server is missing: installing it with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools
    command -v redis-server >/dev/null 2>&1 || die "apt-get ran but redis-server is still not on PATH"
}

# Fails unless cargo is on PATH.
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo is missing: install the Rust toolchain (https://rustup.rs) and retry"
}

# True when Debian's Chromium (or SB_CHROMIUM) is there for the browser tests.
have_chromium() {
    if [ -n "${SB_CHROMIUM:-}" ]; then
        [ -x "$SB_CHROMIUM" ]
    else
        command -v chromium >/dev/null 2>&1
    fi
}

# Installs Chromium with apt-get when it is missing; never fails (the browser
# tests are skipped, loudly, without it).
ensure_chromium() {
    have_chromium && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "chromium is missing and there is no apt-get: the browser tests will be SKIPPED"
        return 0
    fi
    say "chromium is missing: installing it with apt-get (for the browser tests)"
    # A subshell: as_root exits when it cannot become root, which must not end the caller.
    if ! (as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium); then
        warn "could not install chromium: the browser tests will be SKIPPED"
    fi
    return 0
}

# Prints the node command line that has a global WebSocket (Node 22+ has one;
# Node 20.10+ behind --experimental-websocket), or nothing without Node.
node_with_websocket() {
    command -v node >/dev/null 2>&1 || return 0
    if node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
        echo node
    elif node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
        echo "node --experimental-websocket"
    fi
}
