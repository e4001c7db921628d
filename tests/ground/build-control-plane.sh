#!/usr/bin/env bash
# Build kube-apiserver, kubectl and etcd from source with the machine's Go
# toolchain, through the Go module proxy, into a cache outside git.
#
# Prints the folder holding the three binaries (the KUBEBUILDER_ASSETS
# convention) on its last line. A second run with the cache in place costs
# nothing; binaries already named by KUBEBUILDER_ASSETS are used as they are.
# Usage: build-control-plane.sh [KUBERNETES_VERSION]
set -euo pipefail

version=${1:-${KUBE_VERSION:-v1.37.2}}
cache=${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gke-ingress-timeout/control-plane}
out="$cache/$version"

for dir in "${KUBEBUILDER_ASSETS:-}" "$out"; do
  if [ -n "$dir" ] && [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ] && [ -x "$dir/kubectl" ]; then
    echo "$dir"
    exit 0
  fi
done

command -v go >/dev/null || { echo "go is required to build the control plane" >&2; exit 1; }
# One build at a time: a second one (make test beside make bench, say) waits for the
# first and then finds its binaries, instead of deleting the folder it builds in.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kubectl" ]; then
  echo "$out"
  exit 0
fi
minor=${version#v1.}; minor=${minor%%.*}
staging="v0.${version#v1.}"
work="$cache/src-$version"
rm -rf "$work"
mkdir -p "$work" "$out.tmp"
cd "$work"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

start=$(date +%s)
go mod init control-plane >/dev/null 2>&1
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
# with local folders, which do not reach a dependant: map each to the
# published v0.X.Y that matches release v1.X.Y.
modfile=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
grep -E '^\s+k8s\.io/[^ ]+ v0\.0\.0\s*(//.*)?$' "$modfile" | awk '{print $1}' | sort -u | while read -r mod; do
  go mod edit -replace "$mod=$mod@$staging"
done
go mod edit -require "k8s.io/kubernetes@$version"
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$modfile")
go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" "k8s.io/kubernetes/cmd/kubectl@$version" \
  "go.etcd.io/etcd/server/v3@$etcd_version"

pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
  -X $pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$version"
go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
mv "$out.tmp" "$out"
cd / && rm -rf "$work"
echo "built kube-apiserver, kubectl $version and etcd $etcd_version in $(( $(date +%s) - start ))s" >&2
echo "$out"
