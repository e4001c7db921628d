#!/usr/bin/env bash
# Provide what the chart and monitoring tests need: helm, built from source through
# the Go module proxy into a cache outside git (keyed by version, minutes the first
# time only), and Debian's prometheus package (prometheus and promtool), installed
# with apt-get when missing (needs root then).
#
# Idempotent. Prints three lines, HELM=PATH, PROMETHEUS=PATH and PROMTOOL=PATH.
# Usage: operator-tools.sh [HELM_VERSION]
set -euo pipefail

helm_version=${1:-${HELM_VERSION:-v4.3.2}}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gke-ingress-timeout/helm
out="$cache/$helm_version"
say() { echo "operator-tools.sh: $*" >&2; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { say "install as root: apt-get install prometheus"; exit 1; }
  say "installing prometheus (prometheus and promtool)"
  export DEBIAN_FRONTEND=noninteractive
  # Where an init system runs, the package would start a server on :9090 that no test
  # asked for: a policy-rc.d of our own (only if there is none) forbids that.
  rc=/usr/sbin/policy-rc.d
  ours=""
  if [ ! -e "$rc" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$rc" && chmod +x "$rc" && ours=1
  fi
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2 || { [ -z "$ours" ] || rm -f "$rc"; exit 1; }
  [ -z "$ours" ] || rm -f "$rc"
fi

if [ ! -x "$out/helm" ]; then
  command -v go >/dev/null || { say "go is required to build helm"; exit 1; }
  # One build at a time: a second caller waits, then finds the binary.
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -x "$out/helm" ]; then
    start=$(date +%s)
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    # -X: a `go install` build knows only the major.minor; the tests read the full version.
    GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$out.tmp" go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
      "helm.sh/helm/v4/cmd/helm@$helm_version" >&2
    mv "$out.tmp" "$out"
    say "built helm $helm_version in $(($(date +%s) - start))s"
  fi
fi

echo "HELM=$out/helm"
echo "PROMETHEUS=$(command -v prometheus)"
echo "PROMTOOL=$(command -v promtool)"
