#!/usr/bin/env bash
# Builds Kueue (the Kubernetes job queueing controller, Apache-2.0) from its upstream Go module at the pinned
# version, for the tests of gang admission (tests/operator/test_operator_kueue_cluster.py), and copies its
# CustomResourceDefinitions next to the binary. Cached per version under
#   ${XDG_CACHE_HOME:-~/.cache}/dspark-k8s/kueue-<version>/{bin/kueue,crds/*.yaml}
# so only the first run on a machine compiles.
set -euo pipefail

KUEUE_VERSION=v0.17.0
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dspark-k8s"
DEST="$CACHE_ROOT/kueue-$KUEUE_VERSION"

if [ -x "$DEST/bin/kueue" ] && [ -f "$DEST/crds/kueue.x-k8s.io_workloads.yaml" ]; then
  echo "kueue $KUEUE_VERSION up to date in $DEST"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-kueue: 'go' is not on PATH (need Go >= 1.26)" >&2
  exit 1
fi
export GOMODCACHE="${GOMODCACHE:-$CACHE_ROOT/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE_ROOT/go/build}"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$DEST/bin" "$DEST/crds"
exec 9>"$DEST/.lock"
flock 9
echo "building kueue $KUEUE_VERSION into $DEST (first run only; several minutes)"
start=$(date +%s)
GOBIN="$DEST/bin" go install -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
module_dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp "$module_dir"/config/components/crd/bases/*.yaml "$DEST/crds/"
chmod u+w "$DEST"/crds/*.yaml
echo "  built kueue in $(( $(date +%s) - start ))s"
