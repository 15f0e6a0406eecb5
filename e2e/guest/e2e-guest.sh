#!/bin/bash
# e2e reporter, runs in the guest after cloud-final (e2e-guest.service). Prints what the host checks as
# machine-readable lines on the serial console:
#   E2E-RESULT boot=N key=value      (value runs to the end of the line)
# then runs the storm if asked, and powers off (or reboots while boot N < e2e.boots).
# Kernel command line options read here: e2e.boots=N  e2e.storm=SPEC  e2e.hold=1
set -u
exec >/dev/ttyS0 2>&1

state=/var/lib/e2e
mkdir -p "$state"
boot=$(( $(cat "$state/boot-count" 2>/dev/null || echo 0) + 1 ))
echo "$boot" > "$state/boot-count"
sync

r() { printf 'E2E-RESULT boot=%s %s=%s\n' "$boot" "$1" "$2"; }

cmdline_opt() {  # value of e2e.NAME= on the kernel command line, or $2
  local w words
  read -r -a words < /proc/cmdline
  for w in "${words[@]}"; do
    case "$w" in "e2e.$1="*) echo "${w#*=}"; return ;; esac
  done
  echo "${2:-}"
}

r phase start
# Every program started under software emulation costs about 0.1 s of guest time (fork, exec and the
# translation of its code), so this reads with bash's own read and pattern matching wherever it can, and asks
# systemctl, journalctl and the hashing tools once for all their units and files.
read -r up _ < /proc/uptime
r uptime_s "$up"
read -r kr < /proc/sys/kernel/osrelease
r kernel "$kr"
IFS= read -r cl < /proc/cmdline
r cmdline "$cl"
iid=none
if [ -f /var/lib/cloud/data/instance-id ]; then IFS= read -r iid < /var/lib/cloud/data/instance-id || true; fi
r instance_id "$iid"
# cloud-init's errors as the JSON list result.json holds ("[]" when none; "none" when cloud-init did not run
# this boot, e.g. with cloud-init=disabled). Read by bash, not python3: each Python start costs seconds under
# TCG. The last "errors": [...] of the file (the leading .* is greedy), newlines taken out.
if [ -f /run/cloud-init/result.json ]; then
  js=
  IFS= read -r -d '' js < /run/cloud-init/result.json || true
  js=${js//$'\n'/}
  errs=
  if [[ $js =~ .*\"errors\":\ *(\[[^]]*\]) ]]; then errs=${BASH_REMATCH[1]}; fi
  if [[ $errs =~ ^\[\ *\]$ ]]; then errs='[]'; fi
  r cloud_init_errors "$errs"
else
  r cloud_init_errors none
fi

# The kernel's audit status, one key per field (auditctl -s talks to the kernel, not to auditd).
while read -r k v; do
  [ -n "$k" ] && r "audit.$k" "$v"
done < <(auditctl -s 2>&1)
# The same right after the rules loaded at boot (e2e-early.service), before cloud-init's final stage.
if [ -f /run/e2e-early ]; then
  {
    read -r eu
    r early.uptime_s "$eu"
    while read -r k v; do
      [ -n "$k" ] && r "early.$k" "$v"
    done
  } < /run/e2e-early
fi
# The units' properties in one systemctl call: unit.Property -> value. systemctl prints a block per unit,
# separated by an empty line, with the unit's Id among the block's lines (not first), and a property with
# several values (ExecStartPost with several commands) once per value: joined here by newlines.
declare -A unit=()
block=()
store_block() {
  local line id=''
  for line in "${block[@]}"; do [[ $line == Id=* ]] && id=${line#Id=}; done
  for line in "${block[@]}"; do
    k="$id.${line%%=*}"
    unit[$k]=${unit[$k]:+${unit[$k]}$'\n'}${line#*=}
  done
  block=()
}
while IFS= read -r line; do
  if [ -z "$line" ]; then store_block; else block+=("$line"); fi
done < <(systemctl show -p Id,Result,ActiveState,ExecMainExitTimestampMonotonic,ExecMainStartTimestampMonotonic \
  -p RefuseManualStop,ExecStartPost,Requires \
  cdk-audit-backlog.service auditd.service audit-rules.service cloud-final.service 2>/dev/null)
store_block
# The boot unit (installed by the block): whether it ran, what it said, and when it ended compared with
# the units that load the rules (monotonic microseconds; 0: the unit does not exist or did not run).
r boot_unit_result "${unit[cdk-audit-backlog.service.Result]:-} ${unit[cdk-audit-backlog.service.ActiveState]:-}"
r boot_unit_exit_us "${unit[cdk-audit-backlog.service.ExecMainExitTimestampMonotonic]:-0}"
r auditd_start_us "${unit[auditd.service.ExecMainStartTimestampMonotonic]:-0}"
r audit_rules_start_us "${unit[audit-rules.service.ExecMainStartTimestampMonotonic]:-0}"
r cloud_final_start_us "${unit[cloud-final.service.ExecMainStartTimestampMonotonic]:-0}"
n=0
while IFS= read -r line; do
  [[ $line == 'cdk-audit-backlog: '* ]] || continue
  n=$((n + 1)); r "unit_output.$n" "$line"
done < <(journalctl -b -u cdk-audit-backlog.service -o cat --no-pager 2>/dev/null)
r unit_output_lines "$n"
n=0
while IFS= read -r line; do
  [[ $line == 'No rules'* ]] || n=$((n + 1))
done < <(auditctl -l 2>/dev/null)
r audit_rules_loaded "$n"
r auditd_active "${unit[auditd.service.ActiveState]:-}"
r auditd_refuse_manual_stop "${unit[auditd.service.RefuseManualStop]:-}"
# Who loads the rules at boot: audit 3.x auditd.service's ExecStartPost, audit 4.0 audit-rules.service.
av=
while IFS= read -r line; do
  [[ $line == 'auditctl version '* ]] && av=${line#auditctl version }
done < <(auditctl -v 2>&1)
r audit_version "$av"
paths='' rest=${unit[auditd.service.ExecStartPost]:-}
while [[ $rest =~ path=([^ \;]*) ]]; do
  paths+="path=${BASH_REMATCH[1]} "
  rest=${rest#*"path=${BASH_REMATCH[1]}"}
done
r auditd_exec_start_post "$paths"
r audit_rules_service "${unit[audit-rules.service.Result]:-} ${unit[audit-rules.service.ActiveState]:-} "
r auditd_requires "${unit[auditd.service.Requires]:-}"
auditctl -h >/dev/null 2>&1
r auditctl_h_rc "$?"
r cloud_init_version "$(dpkg-query -W -f '${Version}' cloud-init 2>/dev/null)"  # `cloud-init --version`: 18 s under TCG

# Files: hash, mode, owner, and the content as one base64 line (one sha256sum and one stat for them all).
list=()
for f in /etc/audit/rules.d/* /etc/audit/audit.rules /etc/audit/audit.rules.prev \
    /var/lib/cdk-audit-backlog/* /etc/default/grub /etc/default/grub.d/*; do
  [ -f "$f" ] && list+=("$f")
done
if [ "${#list[@]}" -gt 0 ]; then
  declare -A sha=() meta=()
  while read -r h f; do sha[$f]=$h; done < <(sha256sum -- "${list[@]}")
  while IFS='|' read -r f m; do meta[$f]=$m; done < <(stat -c '%n|%a %U:%G %s %Y' -- "${list[@]}")
  for f in "${list[@]}"; do
    r "file:$f" "${sha[$f]} ${meta[$f]}"
    r "b64:$f" "$(base64 -w0 < "$f")"
  done
fi
motd=
if [ -f /etc/motd ]; then IFS= read -r -n 200 motd < /etc/motd || true; fi
r motd "$motd"
marker=absent
if [ -e /var/tmp/e2e-user-script-ran ]; then marker=present; fi
r user_script_marker "$marker"
linux=
if [ -f /boot/grub/grub.cfg ]; then
  while IFS= read -r line; do
    if [[ $line =~ ^[[:space:]]+linux[[:space:]] ]]; then
      linux=${line#"${line%%[![:space:]]*}"}
      break
    fi
  done < /boot/grub/grub.cfg
fi
r grub_linux_line "$linux"

# What the user data printed during this boot, from the journal (the serial copy may be interleaved with
# kernel lines; cloud-init-output.log accumulates over boots). The unit whose output it is: cloud-final.service
# up to cloud-init 24.2; from 24.3 (Debian 13's 25.1) every stage runs in cloud-init-main.service and
# cloud-final.service only signals it over a socket.
n=0 errors=0 found=''
while IFS= read -r line; do
  if [[ $line == 'cdk-audit-backlog: '* || $line == 'E2E-USER '* ]]; then
    n=$((n + 1)); r "output.$n" "$line"
  fi
  if [[ $errors -lt 3 && ( $line == *'command not found'* || $line == *'Failed to enable'* ) ]]; then
    found+="$line|"; errors=$((errors + 1))
  fi
done < <(journalctl -b -u cloud-final.service -u cloud-init-main.service -o cat --no-pager 2>/dev/null)
r output_lines "$n"
r user_data_errors "$found"

# Timings (seconds since kernel start): block console lines from the journal, cloud-final's end, and the
# scripts_user module (the whole user data: block and user's lines) from cloud-init's event log.
first='' last=''
while IFS= read -r line; do
  [[ $line == *'cdk-audit-backlog: '* && $line =~ ^\[\ *([0-9.]+)\] ]] || continue
  last=${BASH_REMATCH[1]}; first=${first:-$last}
done < <(journalctl -b -o short-monotonic --no-pager 2>/dev/null)
r block_first_s "$first"
r block_last_s "$last"
r cloud_final_done_s "$(( ${unit[cloud-final.service.ExecMainExitTimestampMonotonic]:-0} / 1000 ))e-3"
# The scripts_user module's duration (start and finish lines of cloud-init's event log), with awk.
r scripts_user_s "$(awk '/(start|finish): modules-final\/config-scripts[_-]user/{split($2,t,/[:,]/);s=t[1]*3600+t[2]*60+t[3]+t[4]/1000;if(/start:/)a=s;else b=s}END{if(a!=""&&b!="")printf "%.3f",b-a}' /var/log/cloud-init.log 2>/dev/null)"
n=0
while IFS= read -r line; do
  [[ $line == *'audit_backlog_limit='* ]] && n=$((n + 1))
done < <(dmesg)
r kernel_backlog_warnings "$n"
r phase reported

spec=$(cmdline_opt storm)
if [ -n "$spec" ] && [ "$boot" -eq "$(cmdline_opt storm_boot 1)" ]; then
  /usr/local/sbin/e2e-storm "$spec"
fi
r phase "done"
# Everything is reported and on disk: the guest stops without stopping its units one by one (--force: all
# processes get SIGTERM, then the file systems are unmounted or made read-only, as in a full shutdown; no unit
# of the product acts at shutdown). 2-4 s less per boot under TCG; later runs of the same disk find it clean.
sync

if [ "$(cmdline_opt hold 0)" = 1 ]; then exit 0; fi
if [ "$boot" -lt "$(cmdline_opt boots 1)" ]; then
  # The next boot is this instance started again: cloud-init would find nothing new to run (user data runs
  # once per instance), so its stages are left out (they cost 30-50 s under TCG; see vm.NO_CLOUD_INIT).
  touch /etc/cloud/cloud-init.disabled
  sync
  systemctl reboot --force
else
  systemctl poweroff --force
fi
