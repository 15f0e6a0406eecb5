#!/bin/bash
# Image Builder component, build phase: install the boot unit from the parameters and script CreateFile wrote.
set -euo pipefail
say() { echo "cdk-audit-backlog: $*"; }
f=/var/tmp/cdk-audit-backlog.inputs
# The patterns of image_builder.py's _PARAMETERS (the component refuses a document where they differ).
checks=('CAB_TARGET=auto|[1-9][0-9]{0,9}' 'CAB_FRACTION_PPM=[1-9][0-9]{0,5}' 'CAB_MIN=[1-9][0-9]{0,9}' 'CAB_MAX=[1-9][0-9]{0,9}' 'CAB_WAIT=none|[0-9]{1,5}' 'CAB_ALLOW_LOWER=true|false')
# Every line must be NAME=VALUE with VALUE matching its pattern in full before the file is sourced.
for c in "${checks[@]}"; do
  n=${c%%=*}
  grep -Eqx "$n=(${c#*=})" "$f" || { say "build: parameter for $n does not match ${c#*=}"; exit 1; }
done
[ "$(grep -c '' "$f")" -eq "${#checks[@]}" ] || { say "build: unexpected lines in $f"; exit 1; }
set -a
# shellcheck disable=SC1090  # every line was matched against its pattern above
. "$f"
set +a
[ "$CAB_WAIT" != none ] || CAB_WAIT=
if [ "$CAB_ALLOW_LOWER" = true ]; then CAB_ALLOW_LOWER=1; else CAB_ALLOW_LOWER=0; fi
if ((CAB_FRACTION_PPM>250000||CAB_MIN>CAB_MAX||CAB_MAX>2147483647||${CAB_WAIT:-0}>60000)) || { [ "$CAB_TARGET" != auto ] && ((CAB_TARGET>2147483647)); }; then
  say "build: parameters out of range"
  exit 1
fi
CAB_UNIT=auto
[ "$CAB_TARGET" = auto ] || CAB_UNIT=fixed
export CAB_UNIT CAB_WAIT CAB_ALLOW_LOWER CAB_SOURCE=image-builder
/bin/bash /var/tmp/cdk-audit-backlog.sh install
/bin/bash /usr/local/sbin/cdk-audit-backlog boot
rm -f "$f" /var/tmp/cdk-audit-backlog.sh
