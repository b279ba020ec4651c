# shellcheck shell=bash
# Sourced by the scripts in scripts/ (not a command): finds the repository root and keeps the
# repository's .venv installed. Everything it prints goes to stderr, because `scripts/serve`
# hands stdout to the MCP protocol.
#
# The venv holds an editable install of the project. `.venv/.bootstrap-stamp` records which
# extras were installed ("" or "dev"); the venv is refreshed when pyproject.toml is newer than
# the stamp, when a caller needs the dev extras and they are missing, or when the venv is broken.

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
VENV="$ROOT/.venv"
STAMP="$VENV/.bootstrap-stamp"
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

# Every step checks its own status: callers run this under `||`, where `set -e` is off.
_venv_install() {
    local want="$1" have="" spec
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        _venv_log "error: '$PYTHON' not found; install Python 3.11+ (or set PYTHON=/path/to/python)."
        return 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        _venv_log "error: $("$PYTHON" --version 2>&1) is too old; Python 3.11+ is required" \
            "(set PYTHON=/path/to/python3.11)."
        return 1
    fi
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        [[ -f "$STAMP" ]] && have="$(<"$STAMP")"
    else
        _venv_log "Creating $VENV ..."
        "$PYTHON" -m venv --clear "$VENV" >&2 || {
            _venv_log "error: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)."
            return 1
        }
    fi
    # Once installed, the dev extras stay: `serve` (which needs none) never drops them, and
    # `test` after `serve` never reinstalls them.
    [[ "$have" == dev ]] && want=dev
    spec="$ROOT"
    [[ -n "$want" ]] && spec="${ROOT}[${want}]"
    _venv_log "Installing mcp-background-job${want:+[$want]} (editable) into $VENV ..."
    rm -f "$STAMP" || return 1
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
        --editable "$spec" >&2 || {
        _venv_log "error: pip install failed (see above)."
        return 1
    }
    printf '%s\n' "$want" >"$STAMP" || return 1
    _venv_log "Installed."
}

# ensure_venv [dev]: make .venv ready, installing or updating it if needed.
ensure_venv() {
    local want="${1:-}" rc=0
    _venv_ready "$want" && return 0
    # Two clients may start `scripts/serve` at once: serialize installs on a lock held on
    # pyproject.toml (read-only descriptor, released before the caller execs the real program).
    if command -v flock >/dev/null 2>&1; then
        exec 9<"$ROOT/pyproject.toml"
        flock 9
    fi
    _venv_ready "$want" || _venv_install "$want" || rc=$?
    if command -v flock >/dev/null 2>&1; then
        flock -u 9
        exec 9<&-
    fi
    return "$rc"
}
