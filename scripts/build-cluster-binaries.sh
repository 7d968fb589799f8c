#!/usr/bin/env bash
# Builds the test Kubernetes control plane from the upstream Go modules at the versions pinned in
# scripts/cluster-versions.env: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok and helm. Binaries are cached per pinned version set under
#   ${XDG_CACHE_HOME:-~/.cache}/dspark-k8s/<key>/bin
# so only the first run on a machine compiles; later runs only check that the files are there.
#
# k8s.io/kubernetes and go.etcd.io/etcd/server/v3 cannot be `go install`ed at a version (their
# go.mod replaces sibling modules with local paths), so each is built from a small wrapper module
# generated under the cache directory (never committed) that requires the module and pins the
# siblings to their published versions. kwok and helm are plain `go install module@version`.
#
# etcd and kube-apiserver are required: if either fails the script exits 1. Any other component
# that fails is reported and skipped (exit 0); the Python cluster then runs without it.
#
# Environment: DSPARK_CLUSTER_BIN_DIR overrides the bin directory; GOMODCACHE/GOCACHE default to
# <cache>/dspark-k8s/go/{mod,build}; CLUSTER_BINS_ONLY="etcd kube-apiserver" builds a subset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=cluster-versions.env
source "$ROOT/scripts/cluster-versions.env"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dspark-k8s"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN="${DSPARK_CLUSTER_BIN_DIR:-$CACHE_ROOT/$KEY/bin}"
WORK="$CACHE_ROOT/$KEY/src"

export GOMODCACHE="${GOMODCACHE:-$CACHE_ROOT/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE_ROOT/go/build}"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
# Keep the build lean on small machines: no DWARF, no symbol table, no local paths.
LDFLAGS_BASE="-s -w"

ALL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm kubectl)
REQUIRED=(etcd kube-apiserver)
read -r -a COMPONENTS <<<"${CLUSTER_BINS_ONLY:-${ALL_COMPONENTS[*]}}"

if ! command -v go >/dev/null 2>&1; then
  echo "build-cluster-binaries: 'go' is not on PATH (need Go >= 1.26)" >&2
  exit 1
fi

mkdir -p "$BIN" "$WORK"
# One build at a time per version set (two `make` targets may call this concurrently).
exec 9>"$CACHE_ROOT/$KEY/.lock"
flock 9

missing=()
for c in "${COMPONENTS[@]}"; do
  if [ ! -x "$BIN/$c" ] || { [ "$c" = kwok ] && [ ! -f "$BIN/kwok-stages.yaml" ]; }; then
    missing+=("$c")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "cluster binaries ($KEY) up to date in $BIN"
  exit 0
fi

k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)
k8s_patch=$(echo "$K8S_VERSION" | cut -d. -f3)
STAGING_VERSION="v0.${k8s_minor}.${k8s_patch}"
helm_major=$(echo "$HELM_VERSION" | cut -d. -f1)
HELM_MODULE="helm.sh/helm"
[ "$helm_major" = "v2" ] || [ "$helm_major" = "v1" ] || HELM_MODULE="helm.sh/helm/$helm_major"

echo "building cluster binaries ($KEY): ${missing[*]}"
echo "  into $BIN"
echo "  $(go version); GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
t_all=$(date +%s)
failed=()

now() { date +%s; }

# NOTE: these functions run where `set -e` is off (inside `if`), so every step checks its status.

# Generates the k8s.io/kubernetes wrapper module once (go.mod + go.sum, under the cache dir).
prepare_kubernetes() {
  local dir="$WORK/kubernetes" upstream mods m n=0 pkgs=()
  if [ -f "$dir/.ready" ]; then return 0; fi
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  printf 'module dspark.local/clusterbins/kubernetes\n\ngo 1.26\n' >"$dir/go.mod" || return 1
  (cd "$dir" && go mod edit -require="k8s.io/kubernetes@$K8S_VERSION") || return 1
  upstream=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p') || return 1
  [ -f "$upstream" ] || { echo "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION" >&2; return 1; }
  # Every staging module (k8s.io/X => ./staging/src/k8s.io/X) -> its published v0.<minor>.<patch>.
  mods=$(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*|\1|p' "$upstream")
  for m in $mods; do
    (cd "$dir" && go mod edit -replace="$m=$m@$STAGING_VERSION") || return 1
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "no staging replaces found in $upstream" >&2; return 1; }
  echo "wrapper module: k8s.io/kubernetes $K8S_VERSION with $n staging modules at $STAGING_VERSION"
  for m in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    pkgs+=("k8s.io/kubernetes/cmd/$m@$K8S_VERSION")
  done
  (cd "$dir" && go get "${pkgs[@]}") || return 1
  touch "$dir/.ready"
}

prepare_etcd() {
  local dir="$WORK/etcd" m pkgs=()
  if [ -f "$dir/.ready" ]; then return 0; fi
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  printf 'module dspark.local/clusterbins/etcd\n\ngo 1.26\n' >"$dir/go.mod" || return 1
  # The server module replaces its siblings with ../api etc.: pin them to the same release.
  for m in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
    pkgs+=("go.etcd.io/etcd/$m@$ETCD_VERSION")
  done
  (cd "$dir" && go get "${pkgs[@]}") || return 1
  echo "wrapper module: go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  touch "$dir/.ready"
}

# kwok (since v0.7) has no built-in stages: ship its "fast" set (node/fast,
# node/heartbeat-with-lease, pod/fast) from the same module version next to the binary.
kwok_stages() {
  local dest="$1" src d f first=1
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [ -d "$src/kustomize/stage" ] || { echo "no kustomize/stage in sigs.k8s.io/kwok@$KWOK_VERSION" >&2; return 1; }
  {
    echo "# kwok $KWOK_VERSION stages: node/fast, node/heartbeat-with-lease, pod/fast (generated)"
    for d in node/fast node/heartbeat-with-lease pod/fast; do
      for f in $(sed -n 's/^- \(.*\.yaml\)$/\1/p' "$src/kustomize/stage/$d/kustomization.yaml"); do
        [ $first -eq 1 ] || echo "---"
        first=0
        cat "$src/kustomize/stage/$d/$f" || return 1
      done
    done
  } >"$dest.tmp" || return 1
  grep -q "name: pod-ready" "$dest.tmp" || { echo "kwok stages incomplete" >&2; return 1; }
  mv "$dest.tmp" "$dest"
}

k8s_ldflags() {
  local x="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$LDFLAGS_BASE$x"
}

build_one() {
  local c="$1" out="$BIN/.tmp-$1"
  rm -f "$out"
  case "$c" in
    etcd)
      prepare_etcd || return 1
      (cd "$WORK/etcd" && go build -trimpath -ldflags="$LDFLAGS_BASE" -o "$out" go.etcd.io/etcd/server/v3) ||
        return 1 ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      prepare_kubernetes || return 1
      (cd "$WORK/kubernetes" && go build -trimpath -ldflags="$(k8s_ldflags)" -o "$out" "k8s.io/kubernetes/cmd/$c") ||
        return 1 ;;
    kwok)
      local gobin="$WORK/gobin-kwok"
      rm -rf "$gobin"
      GOBIN="$gobin" go install -trimpath \
        -ldflags="$LDFLAGS_BASE -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" || return 1
      kwok_stages "$BIN/kwok-stages.yaml" || return 1
      mv "$gobin/kwok" "$out" || return 1 ;;
    helm)
      local gobin="$WORK/gobin-helm"
      rm -rf "$gobin"
      # helm's own version string is only major.minor unless set at link time.
      GOBIN="$gobin" go install -trimpath -ldflags="$LDFLAGS_BASE -X $HELM_MODULE/internal/version.version=$HELM_VERSION" \
        "$HELM_MODULE/cmd/helm@$HELM_VERSION" || return 1
      mv "$gobin/helm" "$out" || return 1 ;;
    *)
      echo "unknown component $c" >&2
      return 1 ;;
  esac
  mv -f "$out" "$BIN/$c"
}

mkdir -p "$WORK/logs"
for c in "${missing[@]}"; do
  t0=$(now)
  echo "--> $c"
  # The go command's download chatter goes to a log; shown when the build fails.
  if build_one "$c" >"$WORK/logs/$c.log" 2>&1; then
    echo "    built $c in $(($(now) - t0))s ($(du -h "$BIN/$c" | cut -f1))"
  else
    echo "    FAILED to build $c after $(($(now) - t0))s; last lines of $WORK/logs/$c.log:" >&2
    tail -n 30 "$WORK/logs/$c.log" | sed 's/^/    | /' >&2
    failed+=("$c")
  fi
done
cp "$ROOT/scripts/cluster-versions.env" "$CACHE_ROOT/$KEY/versions.env"

echo "cluster binaries done in $(($(now) - t_all))s: $(cd "$BIN" && ls | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
  echo "WARNING: failed to build: ${failed[*]}" >&2
  for r in "${REQUIRED[@]}"; do
    for f in "${failed[@]}"; do
      if [ "$f" = "$r" ]; then
        echo "ERROR: $r is required for the test cluster" >&2
        exit 1
      fi
    done
  done
fi
