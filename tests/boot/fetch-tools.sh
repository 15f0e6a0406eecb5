#!/usr/bin/env bash
# Fetches real tools for the boot-script tests without installing them: Debian 12's auditd package (its
# augenrules, shipped rules, and auditctl, which the tests only ever run with -h or -s), gawk (the awk of
# RHEL and Amazon Linux) with its library, and busybox (a third, minimal awk). `apt-get download` +
# `dpkg-deb -x` into DIR/root; nothing touches the system.
# Then the audit 4 generation: Debian 13's auditd 4.0.2 (augenrules, shipped rules, audit-rules.service and
# auditd.service, auditctl) with its libraries and Debian 13's libc (auditctl 4.0.2 needs a newer glibc than
# Debian 12's: the tests run it through that libc's own loader) into DIR/audit4/root. Debian 13 is in the
# same archive: a private apt state under DIR/audit4 reads the host's deb822 sources with the suite renamed.
# Tests that need them skip with a reason when they are missing (e.g. not a Debian machine).
set -euo pipefail
dir=${1:?usage: fetch-tools.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
packages=(auditd libauparse0 libaudit1 libcap-ng0 gawk libsigsegv2 busybox)
audit4_packages=(auditd libaudit1 libauparse0t64 libcap-ng0 libc6)
host_sources=/etc/apt/sources.list.d/debian.sources
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

a4=$dir/audit4
if grep -q '^Suites:.*bookworm' "$host_sources" 2>/dev/null; then
  rm -rf "$a4"
  mkdir -p "$a4/sources.d" "$a4/lists/partial" "$a4/cache/archives/partial" "$a4/debs" "$a4/root"
  sed 's/bookworm/trixie/g' "$host_sources" >"$a4/sources.d/trixie.sources"
  apt4=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$a4/sources.d" -o Dir::State::Lists="$a4/lists"
    -o Dir::Cache="$a4/cache" -o Dir::State::Status=/dev/null -o Debug::NoLocking=1)
  [ "$(id -u)" -ne 0 ] || apt4+=(-o APT::Sandbox::User=root)
  cd "$a4/debs"
  if apt-get -qq "${apt4[@]}" update && apt-get -qq "${apt4[@]}" download "${audit4_packages[@]}"; then
    for deb in ./*.deb; do
      dpkg-deb -x "$deb" "$a4/root"
    done
    dpkg-deb -f auditd_*.deb Version >"$a4/auditd-version"
  else
    echo "fetch-tools: could not download Debian 13's auditd; the audit 4 boot tests will be skipped" >&2
  fi
else
  echo "fetch-tools: no Debian 12 deb822 sources at $host_sources; the audit 4 boot tests will be skipped" >&2
fi
touch "$dir/.stamp"
