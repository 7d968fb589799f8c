#!/usr/bin/env bash
# Builds the S3-compatible test server (gofakes3, MIT licence) from its upstream Go module at the pinned
# version, for the tests of publishing a draft to S3 (tests/publish). Cached per version under
#   ${XDG_CACHE_HOME:-~/.cache}/dspark-k8s/gofakes3-<version>/bin/gofakes3
# so only the first run on a machine compiles.
set -euo pipefail

GOFAKES3_VERSION=v1.2.0
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dspark-k8s"
BIN="$CACHE_ROOT/gofakes3-$GOFAKES3_VERSION/bin"

if [ -x "$BIN/gofakes3" ]; then
  echo "gofakes3 $GOFAKES3_VERSION up to date in $BIN"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-s3-server: 'go' is not on PATH (need Go >= 1.26)" >&2
  exit 1
fi
export GOMODCACHE="${GOMODCACHE:-$CACHE_ROOT/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE_ROOT/go/build}"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$BIN"
echo "building gofakes3 $GOFAKES3_VERSION into $BIN"
start=$(date +%s)
GOBIN="$BIN" go install -ldflags "-s -w" "github.com/johannesboyne/gofakes3/cmd/gofakes3@$GOFAKES3_VERSION"
echo "  built gofakes3 in $(( $(date +%s) - start ))s"
