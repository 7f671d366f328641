#!/usr/bin/env bash
# Regenerates tests/data/golden/sublime*.json: the exact bytes of the sublime-security
# Machinery fork (v1 tree), captured by interop/sublime/ built against a fetched copy of
# the fork's source.  Dev-time only; CI tests the Python codec against the committed files.
#
#   interop/sublime-golden.sh [FORK_SOURCE_DIR]
#
# FORK_SOURCE_DIR defaults to .cache/sublime-src (git-ignored); fill it from a clone or
# mirror of github.com/sublime-security/machinery, e.g.
#   git --git-dir=<mirror> archive HEAD | tar -x -C .cache/sublime-src
# Needs Go >= 1.26 (the fork's go.mod), redis-server and moto_server on PATH (both
# installed by scripts/install-services.sh); both are started here on free ports and
# stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$(cd "${1:-$root/.cache/sublime-src}" && pwd)"
[ -f "$src/v1/tasks/signature.go" ] || { echo "$src is not the fork's source (no v1/tasks/signature.go)" >&2; exit 2; }
rev="$(cat "$src/.fork-rev" 2>/dev/null || echo unknown)"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

rport="$(free_port)"
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
mport="$(free_port)"
moto_server -H 127.0.0.1 -p "$mport" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$rport"
wait_port "$mport"

# A go.mod copy whose replace points at $src (the committed one points at .cache/sublime-src).
cp "$root/interop/sublime/go.mod" "$work/go.mod"
cp "$root/interop/sublime/go.sum" "$work/go.sum"
(cd "$root/interop/sublime" && go mod edit -modfile="$work/go.mod" -replace "github.com/RichardKnop/machinery=$src")
cd "$root/interop/sublime"
# moto is plain http: a CA bundle from the environment would only make the SDK refuse the recording transport
env -u AWS_CA_BUNDLE go run -modfile="$work/go.mod" . -redis "redis://127.0.0.1:$rport" -sqs "http://127.0.0.1:$mport" \
  -rev "$rev" -out "$root/tests/data/golden"
