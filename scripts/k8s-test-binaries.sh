#!/usr/bin/env bash
# Installs real Kubernetes test binaries (kube-apiserver, etcd, kubectl, helm)
# into a cache dir and prints that dir on the last line of stdout.
# Idempotent: a component is rebuilt only if its binary or version stamp is missing/stale.
# Everything is built from the Go module proxy (needs Go >= 1.24); Go's module and build
# caches under $HOME make rebuilds fast.
#
# Env: DURABLE_TEST_BIN_DIR (default $HOME/.cache/durable/test-bin), K8S_VERSION, HELM_VERSION.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.34.4}
HELM_VERSION=${HELM_VERSION:-3.19.5}
BIN_DIR=${DURABLE_TEST_BIN_DIR:-$HOME/.cache/durable/test-bin}

log() { echo "k8s-test-binaries: $*" >&2; }

# up_to_date NAME VERSION: binary present and built for VERSION (stamp files avoid exec'ing anything).
up_to_date() { [[ -x "$BIN_DIR/$1" && "$(cat "$BIN_DIR/.$1.version" 2>/dev/null)" == "$2" ]]; }
stamp() { echo "$2" >"$BIN_DIR/.$1.version"; }

need_go() { command -v go >/dev/null || { log "Go toolchain not found; install Go >= 1.24"; exit 1; }; }
mkdir -p "$BIN_DIR"
export CGO_ENABLED=0 # static binaries: no C toolchain needed, and they run on any glibc
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

build_kubernetes() {
  up_to_date kube-apiserver "$K8S_VERSION" && up_to_date kubectl "$K8S_VERSION" &&
    up_to_date etcd "$K8S_VERSION" && return
  need_go
  log "building kube-apiserver, kubectl, etcd for Kubernetes v$K8S_VERSION (first time takes several minutes)"
  local mod="$WORK/k8s" start=$SECONDS gomod minor
  mkdir -p "$mod"
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which are ignored when it
  # is a dependency; a throwaway main module re-maps each one to its published v0.Y.Z tag.
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  {
    echo "module durable.local/k8s-test-binaries"
    echo "go 1.24.0"
    echo "godebug default=go1.24" # same as upstream's go.mod, so runtime defaults match a release build
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#replace \1 => \1 v0.'"${K8S_VERSION#1.}"'#p' "$gomod"
  } >"$mod/go.mod"
  minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  # Stamp the real version: the apiserver and kubectl otherwise report v0.0.0-master and warn about skew.
  local v=k8s.io/component-base/version
  # etcd is built in the same graph: k8s pins go.etcd.io/etcd/server/v3 to the version it is tested
  # with (3.6.4 for 1.34), and Debian's etcd 3.4 lacks RequestWatchProgress, which changes apiserver behaviour.
  (cd "$mod" && go build -mod=mod -trimpath -o "$WORK/out/" \
    -ldflags="-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3)
  mv -f "$WORK/out/kube-apiserver" "$WORK/out/kubectl" "$BIN_DIR/"
  mv -f "$WORK/out/server" "$BIN_DIR/etcd" # go names the .../server/v3 binary "server"
  for b in kube-apiserver kubectl etcd; do stamp $b "$K8S_VERSION"; done
  log "built in $((SECONDS - start))s"
}

build_helm() {
  # The stamp includes the Kubernetes version helm assumes for offline `helm template`.
  local stamp_v="$HELM_VERSION-k8s$K8S_VERSION" kminor=${K8S_VERSION#1.}
  kminor=${kminor%%.*}
  up_to_date helm "$stamp_v" && return
  need_go
  log "building helm v$HELM_VERSION"
  local start=$SECONDS
  GOBIN="$WORK/helm" go install -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  mv -f "$WORK/helm/helm" "$BIN_DIR/helm"
  stamp helm "$stamp_v"
  log "built helm in $((SECONDS - start))s"
}

build_helm
build_kubernetes
echo "$BIN_DIR"
