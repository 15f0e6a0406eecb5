#!/bin/bash
# Image Builder component, test phase (launched instance): the unit ran, the kernel has the rules' -b.
set -euo pipefail
say() { echo "cdk-audit-backlog: $*"; }
u=cdk-audit-backlog.service
a=$(systemctl is-active "$u" 2>&1) || :
[ "$a" = active ] || { say "test: $u did not run at this boot ($a)"; exit 1; }
k=$(auditctl -s | awk '$1=="backlog_limit"{print $2}')
m=$(awk '$1=="-b"{b=$2}END{print b}' /etc/audit/audit.rules)
[ -n "$k" ] && [ "$k" = "$m" ] || { say "test: kernel backlog_limit ${k:-?}, rules -b ${m:-none}"; exit 1; }
say "test: backlog_limit $k ($(grep MemTotal /proc/meminfo))"
