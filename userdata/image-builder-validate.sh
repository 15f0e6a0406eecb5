#!/bin/bash
# Image Builder component, validate phase (build instance): the unit is enabled, the rules load our -b.
set -euo pipefail
say() { echo "cdk-audit-backlog: $*"; }
u=cdk-audit-backlog.service
e=$(systemctl is-enabled "$u" 2>&1) || :
[ "$e" = enabled ] || { say "validate: $u is not enabled ($e)"; exit 1; }
bash -n /usr/local/sbin/cdk-audit-backlog
[ -f /etc/audit/rules.d/zz-cdk-audit-backlog.rules ] || { say "validate: /etc/audit/rules.d/zz-cdk-audit-backlog.rules missing"; exit 1; }
# The distribution's own augenrules merges rules.d (no load); audit.rules then holds the -b auditd loads.
augenrules >/dev/null
m=$(awk '$1=="-b"{b=$2}END{print b}' /etc/audit/audit.rules)
o=$(awk '$1=="-b"{b=$2}END{print b}' /etc/audit/rules.d/zz-cdk-audit-backlog.rules)
if [ -n "$o" ] && [ "$m" != "$o" ]; then
  say "validate: the rules load -b ${m:-none}, our file has -b $o"
  exit 1
fi
say "validate: $u enabled; the rules load -b $m${o:+ (ours)}"
