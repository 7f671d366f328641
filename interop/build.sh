#!/usr/bin/env bash
# Builds mcworker, mcproducer and golden into interop/bin/ (works from any cwd;
# fast when Go's build cache is warm). Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }
mkdir -p bin
go build -o bin/ ./cmd/...
