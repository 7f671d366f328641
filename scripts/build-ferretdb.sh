#!/usr/bin/env bash
# Build the FerretDB server the MongoDB backend tests run against
# (FerretDB with its SQLite backend speaks the MongoDB wire protocol;
# production users run MongoDB itself).
#
# The binary goes to a cache directory keyed by version, outside the repo,
# so clean clones (CI) reuse it:
#   ${MC_CACHE_DIR:-$HOME/.cache/machinery_compat}/ferretdb-<version>/ferretdb
# A binary already there is left alone. The first build takes a few
# minutes. Prints the path.
#
# Why not a bare `go install …/cmd/ferretdb@<version>`: the module zip the Go
# module proxy serves lacks build/version/version.txt (FerretDB's release
# tooling generates it), and a binary built from it panics at start-up
# ("Invalid build/version/version.txt file content … create this file
# manually"). So the module is fetched through the proxy (`go mod download`),
# copied, given that one file (`v<version>`, as FerretDB's docs say), and
# built with `go build` from its own go.mod/go.sum.
set -euo pipefail

LOG_PREFIX=build-ferretdb
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FERRETDB_VERSION=${FERRETDB_VERSION:-v1.24.2}
MODULE=github.com/FerretDB/FerretDB
cache=${MC_CACHE_DIR:-$HOME/.cache/machinery_compat}
dir=$cache/ferretdb-$FERRETDB_VERSION
bin=$dir/ferretdb

if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
    log "ferretdb $FERRETDB_VERSION present: $bin"
    printf '%s\n' "$bin"
    exit 0
fi
command -v go >/dev/null 2>&1 || die "go not found (needed to build ferretdb $FERRETDB_VERSION)"
mkdir -p "$dir"
# Build in a temporary directory and move into place, so an interrupted build
# never leaves a half-written binary that later runs would trust.
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
src=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$FERRETDB_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -n $src && -d $src ]] || die "go mod download $MODULE@$FERRETDB_VERSION gave no source directory"
cp -R "$src" "$tmp/src"
chmod -R u+w "$tmp/src"
printf '%s\n' "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
run "go build $MODULE/cmd/ferretdb@$FERRETDB_VERSION (slow the first time)" \
    env -C "$tmp/src" GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    go build -trimpath -o "$tmp/ferretdb" ./cmd/ferretdb
"$tmp/ferretdb" --version >/dev/null 2>&1 || die "the built ferretdb does not run: $("$tmp/ferretdb" --version 2>&1 | head -3)"
mv "$tmp/ferretdb" "$bin"
log "built $bin"
printf '%s\n' "$bin"
