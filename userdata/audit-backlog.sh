#!/bin/bash
# cdk-audit-backlog boot script (first, simple version; see issue 4 for the full apply-and-verify).
# @@CAB_INPUTS_BEGIN@@
CAB_TARGET="${CAB_TARGET:-auto}"
CAB_FRACTION_PPM="${CAB_FRACTION_PPM:-10000}"
CAB_MIN="${CAB_MIN:-320}"
CAB_MAX="${CAB_MAX:-262144}"
CAB_WAIT="${CAB_WAIT:-}"
CAB_KERNEL_CMDLINE="${CAB_KERNEL_CMDLINE:-0}"
CAB_INSTALL_AUDITD="${CAB_INSTALL_AUDITD:-0}"
CAB_ALLOW_LOWER="${CAB_ALLOW_LOWER:-0}"
CAB_SOURCE="${CAB_SOURCE:-unknown}"
# @@CAB_INPUTS_END@@
CAB_ROOT="${CAB_ROOT:-}"

cab_log() {
  echo "cdk-audit-backlog: $*"
}

# The policy formula; twin of BacklogPolicy.limit_for_memory_bytes in policy.py.
cab_limit_for_kib() {
  local budget fits limit=1
  budget=$(( $1 * 1024 * CAB_FRACTION_PPM / 1000000 ))
  fits=$(( budget / 8970 ))
  if [ "$fits" -lt 1 ]; then limit=0; else while [ $(( limit * 2 )) -le "$fits" ]; do limit=$(( limit * 2 )); done; fi
  [ "$limit" -lt "$CAB_MIN" ] && limit=$CAB_MIN
  [ "$limit" -gt "$CAB_MAX" ] && limit=$CAB_MAX
  echo "$limit"
}

cab_main() {
  set -euo pipefail
  local target=$CAB_TARGET
  if [ "$target" = auto ]; then
    target=$(cab_limit_for_kib "$(awk '/^MemTotal:/ {print $2}' "$CAB_ROOT/proc/meminfo")")
  fi
  cab_log "target $target ($CAB_SOURCE)"
}

cab_main </dev/null
