#!/usr/bin/env bash
# Makes a Debian bookworm base image on this host, for a Docker engine that can pull nothing
# (no registry, as on this project's build machines): debootstrap (minbase) into a temporary
# folder, trimmed, then `docker import`. The image stands in for both `rust:*-bookworm`'s OS
# and `debian:bookworm-slim` in deploy/Dockerfile (see there), and runs binaries built on a
# bookworm host as they are (same glibc).
#
#   deploy/local-base.sh [IMAGE]     default ims-core-base:bookworm; nothing to do if it exists
#
# Needs root, docker and debootstrap (apt-get install debootstrap); debootstrap fetches the
# packages from its default Debian mirror (DEBIAN_MIRROR=URL to choose another). About 30 s
# and 80 MB.
set -euo pipefail

image="${1:-ims-core-base:bookworm}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "local-base: $image exists" >&2
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "local-base: needs debootstrap (apt-get install debootstrap)" >&2
  exit 2
}
[ "$(id -u)" = 0 ] || { echo "local-base: needs root (debootstrap)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
echo "local-base: debootstrap bookworm (minbase) into $root" >&2
# shellcheck disable=SC2086 # DEBIAN_MIRROR is one word or none
debootstrap --variant=minbase bookworm "$root" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  echo "local-base: debootstrap failed" >&2
  exit 1
}
# What a slim image leaves out: package caches and lists, documentation, locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/tmp/*
tar -C "$root" -c . | docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "debootstrap --variant=minbase bookworm (deploy/local-base.sh)" \
  - "$image" >/dev/null
echo "local-base: made $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)" >&2
