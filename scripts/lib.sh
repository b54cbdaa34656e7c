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
