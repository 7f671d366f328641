#!/usr/bin/env bash
# Idempotent setup of a fresh machine (Debian 12, Python 3.11, Go):
#   1. real services for the tests (scripts/install-services.sh)
#   2. the package in editable mode with its dev extra
#   3. the Go interop programs (interop/build.sh, when present)
# Quiet on success, prints the failing command's output on error,
# exits non-zero on any failure. VERBOSE=1 streams all output;
# BOOTSTRAP_FORCE=1 reinstalls the Python package even if up to date.
set -euo pipefail

LOG_PREFIX=bootstrap
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PYTHON=${PYTHON:-python3}
export PYTHON PIP_DISABLE_PIP_VERSION_CHECK=1

command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON"

# 1. services -----------------------------------------------------------
bash scripts/install-services.sh

# 2. python package -----------------------------------------------------
# Skip the (slow-ish) pip run when pyproject/setup.cfg and the interpreter
# are unchanged since the last successful install and the editable install
# still points here. The stamp lives under build/ (git-ignored).
stamp_dir=build/.bootstrap
stamp=$stamp_dir/pip.stamp
want=$( { "$PYTHON" -c 'import sys; print(sys.executable, sys.version)'; cat pyproject.toml setup.cfg 2>/dev/null; } \
        | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
installed_here() {
    "$PYTHON" - "$ROOT" <<'PY' >/dev/null 2>&1
import importlib.util, os, pathlib, sys
os.chdir("/")  # look it up as an installed package, not via the cwd
spec = importlib.util.find_spec("machinery_compat")  # locates without importing
root = pathlib.Path(sys.argv[1]).resolve()
assert spec is not None and spec.origin is not None
assert pathlib.Path(spec.origin).resolve().is_relative_to(root)
PY
}
if [[ "${BOOTSTRAP_FORCE:-0}" != 1 && "$want" == "$have" ]] && installed_here; then
    log "python package up to date (editable, .[dev])"
else
    run "pip install -e '.[dev]'" "$PYTHON" -m pip install -q --root-user-action=ignore -e '.[dev]'
    installed_here || die "machinery_compat is not importable from $ROOT after pip install -e"
    mkdir -p "$stamp_dir"
    printf '%s\n' "$want" >"$stamp"
fi

# 3. go interop programs ------------------------------------------------
if [[ -f interop/build.sh ]]; then
    command -v go >/dev/null 2>&1 || die "go not found (needed by interop/build.sh)"
    run "interop/build.sh" bash interop/build.sh
else
    log "interop/build.sh not present; skipping Go interop build"
fi

log "done"
