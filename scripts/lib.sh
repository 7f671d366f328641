# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it; do not execute it.

# log MSG...  -- one-line progress message on stderr.
log() { printf '[%s] %s\n' "${LOG_PREFIX:-scripts}" "$*" >&2; }

# die MSG...  -- print an error and exit non-zero.
die() { printf '[%s] ERROR: %s\n' "${LOG_PREFIX:-scripts}" "$*" >&2; exit 1; }

# run DESCRIPTION CMD [ARGS...]
# Runs CMD quietly (output to a temp log). On failure prints the last
# lines of that log and returns the command's exit status. Set
# VERBOSE=1 to stream the output instead.
run() {
    local desc=$1; shift
    if [[ "${VERBOSE:-0}" == 1 ]]; then
        log "$desc"
        "$@"
        return
    fi
    local out rc=0
    out=$(mktemp "${TMPDIR:-/tmp}/bootstrap.XXXXXX")
    log "$desc"
    "$@" >"$out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        printf '[%s] FAILED (exit %d): %s\n' "${LOG_PREFIX:-scripts}" "$rc" "$*" >&2
        printf '%s\n' '----- last 60 lines of output -----' >&2
        tail -n 60 "$out" >&2
        printf '%s\n' '-----------------------------------' >&2
    fi
    rm -f "$out"
    return "$rc"
}

# as_root CMD [ARGS...]  -- run CMD as root (directly, or via sudo).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $* (no sudo available)"
    fi
}
