# shellcheck shell=bash
# Sourced by the scripts in scripts/: finds the repository root and keeps the repository's .venv
# installed (`ensure_venv`). Everything it prints goes to stderr, because `scripts/serve` hands
# stdout to the MCP protocol. Run as `bash venv.bash --install [dev]`, it is the build itself.
#
# The venv holds an editable install of the project. `.venv/.bootstrap-stamp` records which
# extras were installed ("" or "dev"); the venv is rebuilt when pyproject.toml is newer than the
# stamp, when a caller needs the dev extras and they are missing, or when it is broken.
#
# How, and why (an MCP client gives a server 60 s to start; with pip the first start took 105 s
# with cold caches here, and 60 s warm):
# - uv installs: the one on PATH, or one fetched once into .venv-uv/ straight from pip's index
#   (uvboot.py: ~1 s, against 5-15 s for `pip install uv` here). uv is given pip's configuration
#   (`pip config list`: index, extra indexes, find-links, constraints, certificate), so it
#   installs from where pip would. If uv cannot be had, pip installs, as it used to.
# - A build never changes the live venv: uv builds a relocatable venv in .venv.new, writes its
#   stamp, and only then swaps it in. An interrupted build leaves .venv.new, which the next build
#   removes. (The pip fallback installs in place; it removes the stamp first and writes it last,
#   and a venv without a stamp is rebuilt from scratch, never trusted.)
# - The build runs in a session of its own (setsid) and logs to .venv-install.log: a client that
#   gives up on a slow first start signals scripts/serve's process group, not the build, which
#   finishes for the next start. The build holds a lock on pyproject.toml, so starts that come
#   meanwhile wait for it instead of building again.

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
VENV="$ROOT/.venv"
STAMP="$VENV/.bootstrap-stamp"
VENV_NEW="$ROOT/.venv.new"
VENV_OLD="$ROOT/.venv.old"
UV_HOME="$ROOT/.venv-uv"
INSTALL_LOG="$ROOT/.venv-install.log"
UVBOOT="$ROOT/scripts/lib/uvboot.py"
# The interpreter that creates the venv; override with PYTHON=/path/to/python3.11.
PYTHON="${PYTHON:-python3}"

_venv_log() { printf '%s\n' "$*" >&2; }

# Succeeds when the venv works, is up to date and has the extras $1 ("" or "dev").
_venv_ready() {
    local want="$1" have
    [[ -x "$VENV/bin/python" && -f "$STAMP" ]] || return 1
    [[ "$ROOT/pyproject.toml" -nt "$STAMP" ]] && return 1
    have="$(<"$STAMP")"
    [[ -z "$want" || "$have" == "$want" ]] || return 1
    "$VENV/bin/python" -c '' 2>/dev/null
}

# ensure_venv [dev]: make .venv ready, building it if needed (see above); returns the build's
# status after printing its log.
ensure_venv() {
    local want="${1:-}" rc=0 offset=0 pid
    _venv_ready "$want" && return 0
    [[ -f "$INSTALL_LOG" ]] && offset="$(wc -c <"$INSTALL_LOG")"
    _venv_log "Setting up $VENV (log: $INSTALL_LOG) ..."
    if command -v setsid >/dev/null 2>&1; then
        setsid --wait bash "$ROOT/scripts/lib/venv.bash" --install "$want" \
            </dev/null >>"$INSTALL_LOG" 2>&1 &
    else
        bash "$ROOT/scripts/lib/venv.bash" --install "$want" </dev/null >>"$INSTALL_LOG" 2>&1 &
    fi
    pid=$!
    wait "$pid" || rc=$?
    tail -c "+$((offset + 1))" "$INSTALL_LOG" >&2
    return "$rc"
}

# --- the build (runs in its own session; every step checks its own status) -----------------

_venv_build_main() {
    local want="$1"
    if command -v flock >/dev/null 2>&1; then
        exec 9<"$ROOT/pyproject.toml"
        flock 9
    fi
    _venv_ready "$want" && return 0 # built by the start this one waited for
    _venv_build "$want"
}

_venv_build() {
    local want="$1" have="" spec started=$SECONDS
    printf '\n==> %s: build of %s\n' "$(date '+%F %T')" "$VENV"
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        _venv_log "error: '$PYTHON' not found; install Python 3.11+ (or set PYTHON=/path/to/python)."
        return 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        _venv_log "error: $("$PYTHON" --version 2>&1) is too old; Python 3.11+ is required" \
            "(set PYTHON=/path/to/python3.11)."
        return 1
    fi
    [[ -x "$VENV/bin/python" && -f "$STAMP" ]] && have="$(<"$STAMP")"
    # Once installed, the dev extras stay: `serve` (which needs none) never drops them, and
    # `test` after `serve` never reinstalls them.
    [[ "$have" == dev ]] && want=dev
    spec="$ROOT"
    [[ -n "$want" ]] && spec="${ROOT}[${want}]"
    _venv_log "Installing mcp-background-job${want:+[$want]} (editable) into $VENV ..."
    _venv_uv_options
    if _venv_find_uv; then
        if _venv_build_uv "$want" "$spec"; then
            _venv_log "Installed with uv in $((SECONDS - started)) s."
            return 0
        fi
        _venv_log "uv could not install it (see above); trying pip."
    fi
    _venv_build_pip "$want" "$spec" || return 1
    _venv_log "Installed with pip in $((SECONDS - started)) s."
}

# pip: the interpreter's own (quick to start), else run straight from the wheel Python ships
# for ensurepip (nothing to install first; ~4x slower to start, as it compiles pip each time).
_venv_pip() {
    local wheel
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip "$@"
        return
    fi
    wheel="$("$PYTHON" "$UVBOOT" pip-wheel)"
    [[ -n "$wheel" ]] || return 1
    "$PYTHON" "$wheel/pip" "$@"
}

# Sets UV to a working uv: on PATH, fetched earlier, or fetched now into $UV_HOME (from pip's
# index, straight from the wheel; with pip if that fails).
_venv_find_uv() {
    local tmp="$UV_HOME.tmp.$$" started=$SECONDS index="" i
    UV="$(command -v uv 2>/dev/null)" && "$UV" --version >/dev/null 2>&1 && return 0
    UV="$UV_HOME/bin/uv"
    "$UV" --version >/dev/null 2>&1 && return 0
    _venv_log "Fetching uv into $UV_HOME ..."
    for ((i = 0; i + 1 < ${#UV_OPTS[@]}; i++)); do
        [[ "${UV_OPTS[i]}" == --index-url ]] && index="${UV_OPTS[i + 1]}"
    done
    if ! "$PYTHON" "$UVBOOT" fetch "$UV_HOME" ${index:+"$index"} \
        || ! "$UV" --version >/dev/null 2>&1; then
        _venv_log "Fetching uv from the index failed; trying pip."
        rm -rf "$tmp"
        if ! _venv_pip install --quiet --disable-pip-version-check --no-input --no-deps \
            --only-binary=:all: --root-user-action=ignore --target "$tmp" uv \
            || ! "$tmp/bin/uv" --version >/dev/null 2>&1; then
            rm -rf "$tmp"
            return 1
        fi
        rm -rf "$UV_HOME" && mv "$tmp" "$UV_HOME" && "$UV" --version >/dev/null 2>&1 || return 1
    fi
    _venv_log "Fetched $("$UV" --version) in $((SECONDS - started)) s."
}

# UV_OPTS: pip's configuration as uv options (see uvboot.py); its environment settings (the
# certificate bundle, the timeout) are exported. Certificates otherwise come from the system's
# store, as pip's (truststore) do, unlike uv's default roots, which fail behind a
# TLS-inspecting proxy.
_venv_uv_options() {
    local item
    UV_OPTS=()
    export UV_NATIVE_TLS=1 UV_SYSTEM_CERTS=1
    while IFS= read -r -d '' item; do
        case $item in
        env:*) export "${item#env:}" ;;
        *) UV_OPTS+=("$item") ;;
        esac
    done < <(_venv_pip config list 2>/dev/null | "$PYTHON" "$UVBOOT" settings)
}

_venv_build_uv() {
    local want="$1" spec="$2" python started=$SECONDS
    python="$(command -v "$PYTHON")"
    rm -rf "$VENV_NEW" "$VENV_OLD" || return 1
    UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --relocatable --python "$python" "$VENV_NEW" \
        || return 1
    # pip weighs every index alike; uv by default takes a package from the first index that has
    # it, so a partial mirror given as an extra index would pin old versions.
    "$UV" pip install --quiet --python "$VENV_NEW/bin/python" "${UV_OPTS[@]}" \
        --index-strategy unsafe-best-match pip --editable "$spec" || return 1
    _venv_log "Packages installed in $((SECONDS - started)) s."
    "$VENV_NEW/bin/python" -c 'import mcp_background_job' || return 1
    printf '%s\n' "$want" >"$VENV_NEW/.bootstrap-stamp" || return 1
    if [[ -e "$VENV" ]]; then
        mv "$VENV" "$VENV_OLD" || return 1
    fi
    mv "$VENV_NEW" "$VENV" || return 1
    rm -rf "$VENV_OLD"
}

_venv_build_pip() {
    local want="$1" spec="$2"
    if [[ ! -f "$STAMP" ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        _venv_log "Creating $VENV ..."
        "$PYTHON" -m venv --clear "$VENV" || {
            _venv_log "error: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)."
            return 1
        }
    fi
    rm -f "$STAMP" || return 1
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
        --editable "$spec" || {
        _venv_log "error: pip install failed (see above)."
        return 1
    }
    printf '%s\n' "$want" >"$STAMP"
}

if [[ "${BASH_SOURCE[0]}" == "$0" && "${1:-}" == --install ]]; then
    _venv_build_main "${2:-}"
    exit $?
fi
