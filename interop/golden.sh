#!/usr/bin/env bash
# Regenerates tests/data/golden/golden.json (exact Go encoding/json bytes of
# Machinery structs). Works from any cwd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
go run ./cmd/golden -out ../tests/data/golden/golden.json
