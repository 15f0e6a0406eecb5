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
r uptime_s "$(cut -d' ' -f1 /proc/uptime)"
r kernel "$(uname -r)"
r cmdline "$(cat /proc/cmdline)"
r instance_id "$(cat /var/lib/cloud/data/instance-id 2>/dev/null || echo none)"
# cloud-init's errors as the JSON list result.json holds ("[]" when none; "none" when cloud-init did not run
# this boot, e.g. with cloud-init=disabled). Read with sed, not python3: each Python start costs seconds under
# TCG.
if [ -f /run/cloud-init/result.json ]; then
  r cloud_init_errors "$(tr -d '\n' </run/cloud-init/result.json | sed -n 's/.*"errors": *\(\[[^]]*\]\).*/\1/p' | sed 's/\[ *\]/[]/')"
else
  r cloud_init_errors none
fi

# The kernel's audit status, one key per field (auditctl -s talks to the kernel, not to auditd).
while read -r k v; do
  [ -n "$k" ] && r "audit.$k" "$v"
done < <(auditctl -s 2>&1)
# The same right after the rules loaded at boot (e2e-early.service), before cloud-init's final stage.
if [ -f /run/e2e-early ]; then
  r early.uptime_s "$(head -n1 /run/e2e-early)"
  while read -r k v; do
    [ -n "$k" ] && r "early.$k" "$v"
  done < <(tail -n +2 /run/e2e-early)
fi
# The boot unit (installed by the block): whether it ran, what it said, and when it ended compared with
# the units that load the rules (monotonic microseconds; 0: the unit does not exist or did not run).
mono() { systemctl show -p "$2" --value "$1" 2>/dev/null || echo 0; }
r boot_unit_result "$(systemctl show -p Result --value cdk-audit-backlog.service) $(systemctl is-active cdk-audit-backlog.service)"
r boot_unit_exit_us "$(mono cdk-audit-backlog.service ExecMainExitTimestampMonotonic)"
r auditd_start_us "$(mono auditd.service ExecMainStartTimestampMonotonic)"
r audit_rules_start_us "$(mono audit-rules.service ExecMainStartTimestampMonotonic)"
r cloud_final_start_us "$(mono cloud-final.service ExecMainStartTimestampMonotonic)"
n=0
while IFS= read -r line; do
  n=$((n + 1)); r "unit_output.$n" "$line"
done < <(journalctl -b -u cdk-audit-backlog.service -o cat --no-pager 2>/dev/null | grep '^cdk-audit-backlog: ')
r unit_output_lines "$n"
r audit_rules_loaded "$(auditctl -l 2>/dev/null | grep -vc '^No rules')"
r auditd_active "$(systemctl is-active auditd.service)"
r auditd_refuse_manual_stop "$(systemctl show -p RefuseManualStop --value auditd.service)"
# Who loads the rules at boot: audit 3.x auditd.service's ExecStartPost, audit 4.0 audit-rules.service.
r audit_version "$(auditctl -v 2>&1 | sed -n 's/^auditctl version //p')"
r auditd_exec_start_post "$(systemctl show -p ExecStartPost --value auditd.service | grep -o 'path=[^ ;]*' | tr '\n' ' ')"
r audit_rules_service "$(systemctl show -p ActiveState,Result --value audit-rules.service | tr '\n' ' ')"
r auditd_requires "$(systemctl show -p Requires --value auditd.service)"
r auditctl_h_rc "$(auditctl -h >/dev/null 2>&1; echo $?)"
r cloud_init_version "$(dpkg-query -W -f '${Version}' cloud-init 2>/dev/null)"  # `cloud-init --version`: 18 s under TCG

# Files: hash, mode, owner, and the content as one base64 line.
for f in /etc/audit/rules.d/* /etc/audit/audit.rules /etc/audit/audit.rules.prev \
    /var/lib/cdk-audit-backlog/* /etc/default/grub /etc/default/grub.d/*; do
  [ -f "$f" ] || continue
  r "file:$f" "$(sha256sum < "$f" | cut -c1-64) $(stat -c '%a %U:%G %s %Y' "$f")"
  r "b64:$f" "$(base64 -w0 < "$f")"
done
r motd "$(head -c 200 /etc/motd 2>/dev/null | head -n1)"
r user_script_marker "$(test -e /var/tmp/e2e-user-script-ran && echo present || echo absent)"
r grub_linux_line "$(grep -m1 -E '^[[:space:]]+linux[[:space:]]' /boot/grub/grub.cfg 2>/dev/null | sed 's/^[[:space:]]*//')"

# What the user data printed during this boot, from the journal (the serial copy may be interleaved with
# kernel lines; cloud-init-output.log accumulates over boots). The unit whose output it is: cloud-final.service
# up to cloud-init 24.2; from 24.3 (Debian 13's 25.1) every stage runs in cloud-init-main.service and
# cloud-final.service only signals it over a socket.
user_output() {
  journalctl -b -u cloud-final.service -u cloud-init-main.service -o cat --no-pager 2>/dev/null
}
n=0
while IFS= read -r line; do
  n=$((n + 1)); r "output.$n" "$line"
done < <(user_output | grep -E '^(cdk-audit-backlog: |E2E-USER )')
r output_lines "$n"
r user_data_errors "$(user_output | grep -E 'command not found|Failed to enable' | head -n3 | tr '\n' '|')"

# Timings (seconds since kernel start): block console lines from the journal, cloud-final's end, and the
# scripts_user module (the whole user data: block and user's lines) from cloud-init's event log.
ts=$(journalctl -b -o short-monotonic --no-pager 2>/dev/null | grep 'cdk-audit-backlog: ' | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p')
r block_first_s "$(echo "$ts" | head -n1)"
r block_last_s "$(echo "$ts" | tail -n1)"
r cloud_final_done_s "$(( $(systemctl show -p ExecMainExitTimestampMonotonic --value cloud-final.service) / 1000 ))e-3"
# The scripts_user module's duration (start and finish lines of cloud-init's event log), with awk.
r scripts_user_s "$(awk '/(start|finish): modules-final\/config-scripts[_-]user/{split($2,t,/[:,]/);s=t[1]*3600+t[2]*60+t[3]+t[4]/1000;if(/start:/)a=s;else b=s}END{if(a!=""&&b!="")printf "%.3f",b-a}' /var/log/cloud-init.log 2>/dev/null)"
r kernel_backlog_warnings "$(dmesg | grep -c 'audit_backlog_limit=' || true)"
r phase reported

spec=$(cmdline_opt storm)
if [ -n "$spec" ] && [ "$boot" -eq "$(cmdline_opt storm_boot 1)" ]; then
  /usr/local/sbin/e2e-storm "$spec"
fi
r phase "done"
sync

if [ "$(cmdline_opt hold 0)" = 1 ]; then exit 0; fi
if [ "$boot" -lt "$(cmdline_opt boots 1)" ]; then
  # The next boot is this instance started again: cloud-init would find nothing new to run (user data runs
  # once per instance), so its stages are left out (they cost 30-50 s under TCG; see vm.NO_CLOUD_INIT).
  touch /etc/cloud/cloud-init.disabled
  sync
  systemctl --no-block reboot
else
  systemctl --no-block poweroff
fi
