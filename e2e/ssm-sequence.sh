#!/bin/bash
# The fleet path on a running machine (e2e/ssm.py): runs the SSM document's commands, exactly as they stand in
# the synthesized template, the way the SSM agent runs an aws:runShellScript step (the lines in a file,
# `sh -c FILE`, as root), several times in one boot, and prints one parseable line per step to the serial console:
#   E2E-SSM step=NAME rc=N limit=N enabled=N pid=N nrestarts=N files=DIGEST
#   E2E-SSM-OUT step=NAME LINE        (what the run printed)
# Delivered by user data that does not tune (so the boot keeps the image's limit) and started after the
# reporter (e2e-guest.service, with e2e.hold=1 so it does not power off); it powers off at the end.
set -u
exec >/dev/ttyS0 2>&1
D=/var/lib/e2e-ssm
CMD=$D/_script.sh
AC=$(readlink -f "$(command -v auditctl)")

# Every program started under software emulation costs about 0.1 s of guest time: a report reads auditctl and
# systemctl once each with bash, and hashes every file in one sha256sum call.
# Content and mtime of every file the script may write: unchanged means the run wrote nothing.
files() {
  local list
  list=$(find /etc/audit /var/lib/cdk-audit-backlog -type f -printf '%p %T@\n' 2>/dev/null | sort)
  { printf '%s\n' "$list"; printf '%s\n' "$list" | cut -d' ' -f1 | xargs -r -d '\n' sha256sum; } |
    sha256sum | cut -c1-16
}
report() {  # step rc
  local k v line limit='' enabled='' pid='' nrestarts='' up
  while read -r k v; do
    case "$k" in backlog_limit) limit=$v ;; enabled) enabled=$v ;; esac
  done < <("$AC" -s 2>/dev/null)
  while IFS= read -r line; do
    case "$line" in MainPID=*) pid=${line#*=} ;; NRestarts=*) nrestarts=${line#*=} ;; esac
  done < <(systemctl show -p MainPID,NRestarts auditd.service)
  read -r up _ < /proc/uptime
  echo "E2E-SSM step=$1 rc=$2 limit=$limit enabled=$enabled pid=$pid nrestarts=$nrestarts files=$(files) uptime=$up"
}
run() {  # step: one association run
  local out rc
  out=$(sh -c "$CMD" 2>&1)
  rc=$?
  printf '%s\n' "$out" | sed "s/^/E2E-SSM-OUT step=$1 /"
  report "$1" "$rc"
}

echo "E2E-SSM-BEGIN memtotal_kb=$(awk '/^MemTotal:/{print $2}' /proc/meminfo) script_bytes=$(wc -c < "$CMD")"
report before -
run first
# The example app monitors, so the document installed the sampler and started its timer. It is stopped for
# the replays below: it would restore their drifts once on its own, at a moment of its choosing.
echo "E2E-SSM-SAMPLER timer=$(systemctl is-active cdk-audit-backlog-sample.timer) installed=$(
  [ -f /etc/systemd/system/cdk-audit-backlog-sample.timer ] && echo yes || echo no)"
systemctl stop cdk-audit-backlog-sample.timer 2>/dev/null
run second

"$AC" -b 320 >/dev/null
report drift -
run after-drift

# A read-only rules directory and our file gone: the limit is applied now, but cannot be persisted.
rm -f /etc/audit/rules.d/zz-cdk-audit-backlog.rules
"$AC" -b 320 >/dev/null
mount --bind /etc/audit/rules.d /etc/audit/rules.d && mount -o remount,bind,ro /etc/audit/rules.d
run read-only
umount /etc/audit/rules.d
run writable-again

# auditctl missing (the package removed by hand): nothing can be applied.
mv "$AC" "$AC.e2e-hidden"
AC=$AC.e2e-hidden
run no-auditctl
mv "$AC" "${AC%.e2e-hidden}"
AC=${AC%.e2e-hidden}
report auditctl-back -

# A rules file that sorts after ours (version sort puts '_' after letters) with its own smaller -b, as another
# tool may write: the merge keeps its -b for the next boot. The run applies the limit now, says which -b the
# rules load, exits 5 (not persisted) and leaves the file alone.
printf -- '-b 512\n' >/etc/audit/rules.d/_site-override.rules
chmod 600 /etc/audit/rules.d/_site-override.rules
run later-file
echo "E2E-SSM-LATER-FILE content=$(tr '\n' ' ' </etc/audit/rules.d/_site-override.rules)"
rm -f /etc/audit/rules.d/_site-override.rules

# Immutable (-e 2) after a drift: the kernel refuses changes until reboot; the run persists and says next boot.
"$AC" -b 320 >/dev/null
"$AC" -e 2 >/dev/null
report immutable-set -
run immutable

echo "E2E-SSM-END"
sync
systemctl poweroff --force  # as the reporter does (e2e/guest/e2e-guest.sh)
