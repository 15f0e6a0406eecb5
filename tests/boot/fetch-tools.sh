#!/usr/bin/env bash
# Fetches real tools for the boot-script tests without installing them: Debian 12's auditd package (its
# augenrules, shipped rules, and auditctl, which the tests only ever run with -h), gawk (the awk of RHEL
# and Amazon Linux) with its library, and busybox (a third, minimal awk). `apt-get download` +
# `dpkg-deb -x` into DIR/root; nothing touches the system.
# Tests that need them skip with a reason when they are missing (e.g. not a Debian machine).
set -euo pipefail
dir=${1:?usage: fetch-tools.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
packages=(auditd libauparse0 libaudit1 libcap-ng0 gawk libsigsegv2 busybox)
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "fetch-tools: no apt-get/dpkg-deb here; the real-tool boot tests will be skipped" >&2
  exit 0
fi
mkdir -p "$dir/debs" "$dir/root"
cd "$dir/debs"
if ! apt-get download -qq "${packages[@]}" 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fetch-tools: apt-get download failed and not root (no apt-get update); tests will skip" >&2
    exit 0
  fi
  apt-get update -qq
  apt-get download -qq "${packages[@]}" 2>/dev/null
fi
for deb in ./*.deb; do
  dpkg-deb -x "$deb" "$dir/root"
done
touch "$dir/.stamp"
