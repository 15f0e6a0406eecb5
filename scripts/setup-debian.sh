#!/usr/bin/env bash
# Installs the Debian packages the real-boot tests (e2e/) need, only when one is missing.
set -euo pipefail
packages=(qemu-system-x86 qemu-utils mmdebstrap cloud-image-utils e2fsprogs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "setup-debian: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-debian: not root, cannot install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
