#!/usr/bin/env bash
# Builds the kube tier's kube-apiserver and etcd from the Go module proxy, once, and
# caches them outside the repo. Prints the directory that holds them.
#
#   hack/kube-tools.sh            # build if missing, print the directory
#   KUBE_TOOLS_DIR=... hack/kube-tools.sh
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io staging
# module with ./staging/src/..., and replaces in a dependency are ignored. So a
# throwaway module requires k8s.io/kubernetes and replaces each of those staging
# modules with its published v0.X.Y tag, then builds cmd/kube-apiserver. etcd is built
# in the same module from go.etcd.io/etcd/server/v3 (its root package is the etcd
# main), at the version kubernetes itself requires, so the two share one build cache
# and one dependency graph. A cold build takes about 10-15 minutes on 2 cores.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
# Staging modules are published as v0.<minor>.<patch> of the kubernetes release.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
DIR="${KUBE_TOOLS_DIR:-${HOME}/.cache/rampart-tools/kube-${K8S_VERSION}}"
GO="${GO:-go}"

log() { printf 'kube-tools: %s\n' "$*" >&2; }

if [ -x "$DIR/kube-apiserver" ] && [ -x "$DIR/etcd" ]; then
  echo "$DIR"
  exit 0
fi

mkdir -p "$DIR"
work="$(mktemp -d "${TMPDIR:-/tmp}/rampart-kube-tools.XXXXXX")"
ticker=""
cleanup() {
  if [ -n "$ticker" ]; then pkill -P "$ticker" 2>/dev/null || true; kill "$ticker" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The caller's GOFLAGS (the Makefile's -tags=grpcnotrace) are for Rampart, not for
# the API server; build these as upstream does.
export GOFLAGS="-mod=mod"
export GOWORK=off
export CGO_ENABLED=0

cd "$work"
log "building kube-apiserver ${K8S_VERSION} and etcd into $DIR (a cold build takes about 10-15 minutes on 2 cores)"
"$GO" mod init rampart.dev/kube-tools >/dev/null 2>&1

log "fetching k8s.io/kubernetes@${K8S_VERSION}"
gomod="$("$GO" mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
  log "could not download k8s.io/kubernetes@${K8S_VERSION} from the module proxy"
  exit 1
fi

# Every "k8s.io/X => ./staging/src/k8s.io/X" in kubernetes' go.mod becomes
# "k8s.io/X => k8s.io/X v0.Y.Z" here.
staging=$(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*$|\1|p' "$gomod")
if [ -z "$staging" ]; then
  log "found no staging replaces in $gomod; the layout of kubernetes' go.mod changed"
  exit 1
fi
goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
{
  echo "module rampart.dev/kube-tools"
  echo
  echo "go ${goversion:-1.26.0}"
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m ${STAGING_VERSION}"; done
  echo ")"
} >go.mod
log "replacing $(echo "$staging" | wc -l) staging modules with their ${STAGING_VERSION} tags"

# etcd at the version kubernetes was tested with (its go.mod requires the server
# module for its integration tests).
etcd_version=$(sed -n 's|^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^[:space:]]*\).*|\1|p' "$gomod")
log "resolving the dependency graph"
if ! "$GO" get "k8s.io/kubernetes/cmd/kube-apiserver@${K8S_VERSION}" "go.etcd.io/etcd/server/v3@${etcd_version:?no etcd server version in $gomod}" >"$work/get.log" 2>&1; then
  grep -v '^go: downloading' "$work/get.log" >&2 || true
  log "go get failed"
  exit 1
fi
log "fetched $(grep -c '^go: downloading' "$work/get.log" || true) modules"

# Long compiles print nothing; say every 30s that it is still going.
(
  start=$(date +%s)
  while sleep 30; do log "still building ($(( $(date +%s) - start ))s)"; done
) &
ticker=$!

log "compiling etcd ($(sed -n 's|^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^[:space:]]*\).*|\1|p' go.mod))"
"$GO" build -trimpath -o "$work/etcd" go.etcd.io/etcd/server/v3
log "compiling kube-apiserver ${K8S_VERSION}"
# The version the server reports (/version, --version), as kubernetes' own
# build stamps it; without it a source build says v0.0.0-master.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
"$GO" build -trimpath -ldflags "$ldflags" -o "$work/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

# Move into place only when both built, so a half-done run is retried in full.
mv "$work/etcd" "$DIR/etcd"
mv "$work/kube-apiserver" "$DIR/kube-apiserver"
log "done: $DIR/kube-apiserver, $DIR/etcd"
echo "$DIR"
