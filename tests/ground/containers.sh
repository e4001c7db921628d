#!/usr/bin/env bash
# Prepare what building and testing the image needs, for CI and developers:
# podman, runc, a local registry and a local base image (no base image can be
# pulled where only the package registries are reachable).
#
# Idempotent; installs packages only when missing (needs root then). The base
# rootfs is built once with debootstrap and cached outside git as a tarball.
# Prints one line, CONTAINERS_CONF=FILE, the environment podman needs here. Next to
# FILE, registry.yml serves a registry on 127.0.0.1:5000 (`make push`'s default).
# Use podman as: podman --storage-driver vfs, build --isolation chroot,
# run --runtime runc --network host.
set -euo pipefail

BASE_IMAGE=localhost/gke-ingress-timeout-base:py
PACKAGES=(podman runc docker-registry debootstrap)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gke-ingress-timeout/containers
conf="$cache/containers.conf"
rootfs_tar="$cache/base-bookworm.tar"
say() { echo "containers.sh: $*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { say "install as root: apt-get install ${missing[*]}"; exit 1; }
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$cache"
# crun/runc cannot set the default RLIMIT_NOFILE inside this kind of sandbox.
cat >"$conf.tmp" <<'EOF'
[containers]
default_ulimits = []
EOF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF="$conf"
# A registry on this machine for `make push`: docker-registry serve "$cache/registry.yml"
cat >"$cache/registry.yml.tmp" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $cache/registry
http:
  addr: 127.0.0.1:5000
EOF
mv "$cache/registry.yml.tmp" "$cache/registry.yml"

podman=(podman --storage-driver vfs)
if ! "${podman[@]}" image exists "$BASE_IMAGE"; then
  if [ ! -s "$rootfs_tar" ]; then
    start=$(date +%s)
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    chmod 755 "$rootfs" # it becomes the image's /, which every user must traverse
    trap 'rm -rf "$rootfs" "$rootfs_tar.tmp"' EXIT
    say "debootstrap bookworm into $rootfs (about a minute, once)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" >"$cache/debootstrap.log" 2>&1 ||
      { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # TLS to the package registries may be intercepted: pip in the build must trust
    # the same authorities as this machine.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
    say "base rootfs cached in $rootfs_tar in $(($(date +%s) - start))s"
  fi
  "${podman[@]}" import --quiet --change 'CMD ["python3"]' "$rootfs_tar" "$BASE_IMAGE" >/dev/null
  say "imported $BASE_IMAGE"
fi

echo "CONTAINERS_CONF=$conf"
