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
    # A dev install also satisfies a plain one and a native one (dev has mypy too).
    if [ "$have" = "$want-$extras" ] || { [ "$extras" != dev ] && [ "$have" = "$want-dev" ]; }; then
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

# The compiled form (issue 10): a copy of the tree in build/native whose udsproxy.native.MODULES
# are compiled with mypyc. The working tree itself stays pure Python: a compiled module beside
# its .py shadows it, so an edit there would silently not run. Run the compiled form with
# PYTHONPATH="$NATIVE" (scripts/demo and scripts/test do); `scripts/build-native --clean`.
NATIVE="$ROOT/build/native"

# ensure_compiler: gcc and the venv's Python headers, which mypyc's C needs (Debian: gcc,
# libc6-dev, python3.X-dev; a pyenv or python.org build ships its headers).
ensure_compiler() {
    local missing=() inc ver
    command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    ver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ -f "$inc/Python.h" ] || missing+=("python$ver-dev")
    [ ${#missing[@]} -gt 0 ] || return 0
    can_apt || { warn "missing ${missing[*]} and no apt-get as root"; return 1; }
    log "apt-get install ${missing[*]} (to compile with mypyc)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; } || { warn "apt-get install ${missing[*]} failed"; return 1; }
}

# _tree_files: the tree's files, tracked or new, without what .gitignore leaves out
_tree_files() {
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -z --cached --others --exclude-standard
    else
        (cd "$ROOT" && find . -path ./.git -prune -o -path ./build -prune -o -path ./.venv -prune \
            -o -name __pycache__ -prune -o \( -type f -o -type l \) -print0)
    fi
}

# build_native: (re)build $NATIVE from the working tree as it is now, uncommitted edits
# included. Skipped when no file changed since the last build (a stamp of every file's hash);
# mypyc's C and objects are kept between builds, so a rebuild recompiles only what changed.
build_native() {
    local want have files version
    ensure_compiler || return 1
    files="$(mktemp)"
    _tree_files | grep -zv '^udsproxy/_native_build.py$' >"$files"
    want="$( (cd "$ROOT" && xargs -0 sha256sum <"$files" 2>/dev/null \
        && "$VENV/bin/python" -m mypy --version) | sha256sum | cut -d' ' -f1)"
    have="$(cat "$NATIVE/.stamp" 2>/dev/null || true)"
    if [ "$want" = "$have" ] && [ -d "$NATIVE/udsproxy" ]; then
        rm -f "$files"
        return 0
    fi
    log "mypyc: compiling udsproxy.native.MODULES into $NATIVE"
    mkdir -p "$NATIVE"
    rm -f "$NATIVE/.stamp"
    # a fresh copy of the sources; mypyc's build/ and .mypy_cache/ stay for the next build
    find "$NATIVE" -mindepth 1 -maxdepth 1 ! -name build ! -name .mypy_cache -exec rm -rf {} +
    (cd "$ROOT" && tar --null -T "$files" -cf -) | tar -C "$NATIVE" -xf -
    rm -f "$files"
    [ ! -d "$ROOT/udsproxy/_cache" ] || cp -a "$ROOT/udsproxy/_cache" "$NATIVE/udsproxy/"
    ln -sfn "$VENV" "$NATIVE/.venv"  # tests that run .venv/bin/udsproxy find it in the copy too
    (cd "$NATIVE" && UDSPROXY_MYPYC=1 "$VENV/bin/python" setup.py -q build_ext --inplace \
        -j "$(nproc)" >build.log 2>&1) || {
        tail -n 30 "$NATIVE/build.log" >&2
        warn "mypyc build failed (all of it: $NATIVE/build.log)"
        return 1
    }
    # from $NATIVE: `python -m` puts the working directory first on sys.path
    version="$(cd "$NATIVE" && PYTHONPATH="$NATIVE" "$VENV/bin/python" -m udsproxy --version)"
    log "$version"
    case "$version" in
        *"compiled with mypyc"*STALE* | *"pure Python"*) warn "not compiled: $version"; return 1 ;;
    esac
    echo "$want" >"$NATIVE/.stamp"
}
