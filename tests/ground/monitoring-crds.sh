#!/usr/bin/env bash
# Provide the CustomResourceDefinitions of the monitoring objects that the chart and
# deploy/monitoring/ render, as their own projects ship them, so that a real apiserver
# judges those objects by the real schemas:
#   PodMonitoring, Rules   Google Cloud Managed Service for Prometheus, module
#                          github.com/GoogleCloudPlatform/prometheus-engine
#                          (charts/operator/crds/)
#   ServiceMonitor,        prometheus-operator, module
#   PrometheusRule         github.com/prometheus-operator/prometheus-operator
#                          (example/prometheus-operator-crd/)
# Both modules come through the Go module proxy (go mod download; checked against the
# checksum database and the pinned h1: sums below), into a throw-away module cache; only
# the four CRD files are kept, in a cache outside git keyed by the versions (the first
# run downloads about 95 MB, later runs nothing).
#
# Idempotent. Prints one line, CRDS=FOLDER (the four CRD files).
# Usage: monitoring-crds.sh
set -euo pipefail

# The versions the Go module proxy serves here; a new pin needs its sum (go mod
# download -json MODULE@VERSION prints it).
gmp=github.com/GoogleCloudPlatform/prometheus-engine
gmp_version=v0.17.2
gmp_sum="h1:b4Sau/04Xn0wqGyGABUzLVOSlM7BxsZHbcYEXP3EDeg="
gmp_files=(
  charts/operator/crds/monitoring.googleapis.com_podmonitorings.yaml
  charts/operator/crds/monitoring.googleapis.com_rules.yaml
)
po=github.com/prometheus-operator/prometheus-operator
po_version=v0.85.0
po_sum="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
po_files=(
  example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
  example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
)

cache=${XDG_CACHE_HOME:-$HOME/.cache}/gke-ingress-timeout/monitoring-crds
out="$cache/gmp-$gmp_version+prometheus-operator-$po_version"  # no comma: kubectl -f splits there
say() { echo "monitoring-crds.sh: $*" >&2; }

# The extracted module's folder, after checking its sum.
download() {
  local module=$1 version=$2 sum=$3 json
  json=$(go mod download -json "$module@$version") || { say "$(field Error <<<"$json")"; return 1; }
  [ "$(field Sum <<<"$json")" = "$sum" ] || {
    say "$module@$version: sum $(field Sum <<<"$json"), pinned $sum"
    return 1
  }
  field Dir <<<"$json"
}
field() { python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }

if [ ! -d "$out" ]; then
  command -v go >/dev/null || { say "go is required to fetch the CRDs"; exit 1; }
  # One fetch at a time: a second caller waits, then finds the files.
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -d "$out" ]; then
    start=$(date +%s)
    rm -rf "$out.tmp" "$cache/.modcache"
    mkdir -p "$out.tmp"
    # A module cache of its own: the modules are large (prometheus-engine unpacks to
    # over 400 MB) and only four files are kept. -modcacherw lets it be removed.
    # Outside any module (cd), so that no go.mod of the caller's is read.
    export GOMODCACHE="$cache/.modcache" GOFLAGS=-modcacherw GOTOOLCHAIN=local
    # Gone whatever happens: the module cache, and a half-filled folder after a failure.
    trap 'rm -rf "$GOMODCACHE" "$out.tmp"' EXIT
    cd "$out.tmp"
    dir=$(download "$gmp" "$gmp_version" "$gmp_sum")
    for f in "${gmp_files[@]}"; do cp "$dir/$f" .; done
    dir=$(download "$po" "$po_version" "$po_sum")
    for f in "${po_files[@]}"; do cp "$dir/$f" .; done
    cd - >/dev/null
    mv "$out.tmp" "$out"
    say "fetched the monitoring CRDs in $(($(date +%s) - start))s"
  fi
fi

echo "CRDS=$out"
