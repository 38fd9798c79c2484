# Shared by scripts/test and scripts/demo (sourced, not run). Idempotent: installs only what is
# missing, reuses the venv, and re-runs pip only when pyproject.toml changed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UDSPROXY_VENV:-$ROOT/.venv}"
SUDO=""

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local p
    for p in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$p" >/dev/null 2>&1 && python_ok "$p"; then
            command -v "$p"
            return 0
        fi
    done
    return 1
}

can_apt() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo"
    else
        return 1
    fi
}

# ensure_system_packages: nginx, curl, openssl, wrk, podman and its tools, and a Python >= 3.11 that can make a venv, installed with
# apt-get when missing. Missing nginx or curl is not fatal here: the tests skip what needs them
# (or fail, under CI=true) and the demo falls back to its built-in upstream.
ensure_system_packages() {
    local missing=() py nginx_pkg
    have_nginx || missing+=(@nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # TLS tests make certificates
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # the benchmark harness's smoke test
    # tests/integration/test_bare_metal.py runs the shipped logrotate file for real
    command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
    # the container image tests (tests/integration/test_image.py, scripts/image); catatonit is
    # podman's pause process for pods
    local tool
    for tool in podman buildah runc debootstrap catatonit; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
    done
    if ! py="$(find_python)"; then
        missing+=(python3 python3-venv)
    elif [ ! -x "$VENV/bin/python" ] && ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)  # Debian ships ensurepip separately
    fi
    [ ${#missing[@]} -gt 0 ] || return 0
    if ! can_apt; then
        warn "missing ${missing[*]/@/} and no apt-get as root: install them yourself"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    $SUDO apt-get update -qq || warn "apt-get update failed"
    # Debian's nginx-light (in Debian 12 it pulls in plain nginx); plain nginx where it is absent.
    if apt-cache show nginx-light >/dev/null 2>&1; then nginx_pkg=nginx-light; else nginx_pkg=nginx; fi
    missing=("${missing[@]/@nginx/$nginx_pkg}")
    log "apt-get install ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || warn "apt-get install ${missing[*]} failed"
}

# ensure_venv [EXTRAS]: $VENV with udsproxy installed in editable mode (with [EXTRAS] if given).
ensure_venv() {
    local extras="${1:-}" py stamp want have spec
    if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python" \
        || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        py="$(find_python)" || die "need Python >= 3.11 (apt-get install python3 python3-venv)"
        log "creating $VENV with $py"
        rm -rf "$VENV"
        "$py" -m venv "$VENV" || die "'$py -m venv' failed (apt-get install python3-venv)"
    fi
    stamp="$VENV/.udsproxy-installed"
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    have="$(cat "$stamp" 2>/dev/null || true)"
    # A dev install also satisfies a plain one.
    if [ "$have" = "$want-$extras" ] || { [ -z "$extras" ] && [ "$have" = "$want-dev" ]; }; then
        if "$VENV/bin/python" -c 'import udsproxy' >/dev/null 2>&1; then
            warm_api_table
            return 0
        fi
    fi
    spec="$ROOT"
    [ -z "$extras" ] || spec="$ROOT[$extras]"
    log "pip install -e $spec"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
    echo "$want-$extras" >"$stamp"
    warm_api_table
}

# warm_api_table: write udsproxy's cached table of Envoy's API now (seconds, once per
# envoy-data-plane version), so no start pays for it; a no-op when it is there. Also the
# package's bytecode (an editable install has none, and with PYTHONDONTWRITEBYTECODE set every
# start would compile 600 KB of source: 0.1 s); checked-hash, so an edited file is never stale.
warm_api_table() {
    "$VENV/bin/python" -m udsproxy.config.api_table >/dev/null \
        || warn "no cached Envoy API table: udsproxy will start slower (about 1 s)"
    "$VENV/bin/python" -m compileall -q --invalidation-mode checked-hash "$ROOT/udsproxy" \
        >/dev/null || warn "could not compile udsproxy's bytecode"
}
