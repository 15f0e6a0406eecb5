#!/bin/bash
# Audit storm runner, in the guest. SPEC is a comma-separated list of runs:
#   LIMIT:WAIT:OPENS:PAUSE     burst of OPENS openat calls while auditd is SIGSTOPped for PAUSE seconds,
#                              with backlog_limit LIMIT and backlog_wait_time WAIT (ticks)
#   mem:LIMIT:OPENS            same with wait 0 and a 30 s pause; kernel memory is read right after the burst,
#                              while auditd is still stopped and the queue is full
# LIMIT/WAIT may be "boot" for the value the kernel had when this script started, LIMIT "boot4" for 4 times it.
# Prints one line per run:  E2E-STORM key=value ...   /   E2E-MEM key=value ...
set -u
spec=$1

status() { auditctl -s | awk -v k="$1" '$1 == k {print $2}'; }

boot_limit=$(status backlog_limit)
boot_wait=$(status backlog_wait_time)
echo "E2E-STORM-BEGIN boot_limit=$boot_limit boot_wait=$boot_wait hz=$(sed -n 's/^CONFIG_HZ=//p' "/boot/config-$(uname -r)" 2>/dev/null)"
if [ "$(status enabled)" = 2 ]; then
  echo "E2E-STORM-ERROR audit configuration is immutable"
  exit 0
fi
# The sampler (live health), where the block installed it: a UDP listener on the CloudWatch agent's StatsD
# port stands in for the agent and keeps each datagram as one line. The timer is stopped for the storm (its
# once-per-boot restore would undo the storm's own `auditctl -b`); the sampler is run by hand instead, right
# around each run, so its figures can be set against the kernel's.
sampler=/usr/local/sbin/cdk-audit-backlog
statsd_log=/run/e2e-statsd.log
have_sampler=no
if [ -f /etc/systemd/system/cdk-audit-backlog-sample.timer ] && [ -f "$sampler" ]; then
  have_sampler=yes
  # The timer first fires at OnBootSec (the interval, 60 s of uptime). A guest that gets here sooner waits for
  # that first run (two minutes at most), so the report shows the timer ran the sampler before the storm.
  for _ in $(seq 1 120); do
    ran=$(systemctl show -p ExecMainExitTimestampMonotonic --value cdk-audit-backlog-sample.service)
    [ "${ran:-0}" != 0 ] && break
    sleep 1
  done
  echo "E2E-SAMPLER timer=$(systemctl is-active cdk-audit-backlog-sample.timer)" \
    "service_result=$(systemctl show -p Result --value cdk-audit-backlog-sample.service)" \
    "service_ran_us=$ran" \
    "interval=$(sed -n 's/^OnUnitActiveSec=//p' /etc/systemd/system/cdk-audit-backlog-sample.timer)"
  systemctl stop cdk-audit-backlog-sample.timer
  # The storm's own `auditctl -b 320` is a drift the sampler restores once per boot: the sampler's mark that
  # it already did is set for the storm, and taken away for the drift replays after it.
  mkdir -p /run/cdk-audit-backlog
  : >/run/cdk-audit-backlog/restored
  : >"$statsd_log"
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 8125))
open(sys.argv[1] + ".ready", "w").close()
with open(sys.argv[1], "a", buffering=1) as f:
    while True:
        data, _ = s.recvfrom(65535)
        f.write(data.decode().strip().replace("\n", ";") + "\n")
' "$statsd_log" &
  listener=$!
  for _ in $(seq 1 150); do [ -e "$statsd_log.ready" ] && break; sleep 0.2; done
fi
# sample TAG: run the sampler by hand; print what it printed, what the listener caught, and its console line.
sample() {
  [ "$have_sampler" = yes ] || return 0
  local before printed caught said
  before=$(wc -l <"$statsd_log")
  said=$(/bin/bash "$sampler" sample 2>&1 >/run/e2e-sample.out)
  printed=$(tr '\n' ';' </run/e2e-sample.out); printed=${printed%;}
  for _ in $(seq 1 25); do [ "$(wc -l <"$statsd_log")" -gt "$before" ] && break; sleep 0.2; done
  caught=$(tail -n +"$((before + 1))" "$statsd_log" | head -n1)
  echo "E2E-STATSD tag=$1 same=$([ "$printed" = "$caught" ] && echo yes || echo no) said=${said:--} datagram=${caught:--}"
}

auditctl -D >/dev/null
auditctl -a always,exit -F arch=b64 -S openat -F key=storm >/dev/null

drain() {  # until the kernel queue is empty (auditd caught up), at most 120 s
  local _
  for _ in $(seq 1 240); do
    [ "$(status backlog)" = 0 ] && return 0
    sleep 0.5
  done
  return 1
}

# One process does stop, timer and burst, so nothing is exec'd (and no file opened) while auditd is stopped
# except the burst itself: an exec'd helper would block on the full queue like any audited process.
burst_py='
import os, sys, time, signal, threading, subprocess
mode, pid, opens, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out
def slab():
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f.readlines()[2:]:
            p = line.split()
            out[p[0]] = int(p[2]) * int(p[3])   # num_objs * objsize
    return out
if mode == "mem":
    m0, s0 = meminfo(), slab()
os.kill(pid, signal.SIGSTOP)
t0 = time.monotonic()
cont = threading.Timer(pause, os.kill, (pid, signal.SIGCONT))
cont.start()
path = "/etc/hostname"
for _ in range(opens):
    os.close(os.open(path, os.O_RDONLY))
burst = time.monotonic() - t0
if mode == "storm" and len(sys.argv) > 5:
    # The sampler while auditd is still stopped (wait 0 only: nothing blocks on the full queue).
    r = subprocess.run(["/bin/bash", sys.argv[5], "sample"], capture_output=True, text=True)
    with open("/run/e2e-mid-sample", "w") as f:
        f.write(r.stdout.strip().replace("\n", ";"))
if mode == "mem":
    m1, s1 = meminfo(), slab()
    backlog = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    backlog = [l.split()[1] for l in backlog.splitlines() if l.startswith("backlog ")][0]
    skb = sum(s1.get(k, 0) - s0.get(k, 0) for k in s1 if k.startswith(("skbuff", "kmalloc")))
    slab, sunr = m1["Slab"] - m0["Slab"], m1["SUnreclaim"] - m0["SUnreclaim"]
    print(f"queued={backlog} slab_growth={slab} sunreclaim_growth={sunr} skb_kmalloc_growth={skb}", end=" ")
cont.join()
print(f"burst_ms={burst * 1000:.0f}")
'

IFS=, read -r -a runs <<< "$spec"
for run in "${runs[@]}"; do
  IFS=: read -r a b c d <<< "$run"
  if [ "$a" = mem ]; then mode=mem limit=$b wait=0 opens=$c pause=30; else mode=storm limit=$a wait=$b opens=$c pause=$d; fi
  [ "$limit" = boot ] && limit=$boot_limit
  [ "$limit" = boot4 ] && limit=$(( boot_limit * 4 ))
  [ "$wait" = boot ] && wait=$boot_wait
  auditctl -b "$limit" --backlog_wait_time "$wait" >/dev/null
  drain
  sample "pre run=$run"
  lost0=$(status lost); actual0=$(status backlog_wait_time_actual)
  pid=$(status pid)
  mid=()
  [ "$have_sampler" != yes ] || [ "$mode" != storm ] || [ "$wait" != 0 ] || mid=("$sampler")
  rm -f /run/e2e-mid-sample
  out=$(python3 -c "$burst_py" "$mode" "$pid" "$opens" "$pause" "${mid[@]}" 2>&1 | tr '\n' ' ')
  [ ! -s /run/e2e-mid-sample ] || echo "E2E-STATSD tag=mid run=$run same=- said=- datagram=$(cat /run/e2e-mid-sample)"
  case "$out" in *burst_ms=*) ;; *) echo "E2E-STORM-ERROR run=$run python: $out"; kill -CONT "$pid"; continue ;; esac
  drained=yes; drain || drained=no
  lost=$(( $(status lost) - lost0 ))
  actual=$(( $(status backlog_wait_time_actual) - ${actual0:-0} ))
  if [ "$mode" = mem ]; then
    echo "E2E-MEM limit=$limit opens=$opens lost=$lost $out"
  else
    echo "E2E-STORM limit=$limit wait=$wait opens=$opens pause_s=$pause lost=$lost wait_actual=$actual drained=$drained $out"
  fi
  sample "post run=$run"
done
auditctl -D >/dev/null
auditctl -b "$boot_limit" --backlog_wait_time "$boot_wait" >/dev/null
if [ "$have_sampler" = yes ]; then
  # Drift replays: what another owner or an operator does to the kernel, replayed with auditctl. auditd owns
  # the socket here: the first drift is restored once, a second one in the same boot is only reported, the
  # same state again prints no new line (a timer never loops on it), audit off changes no limit.
  rm -f /run/cdk-audit-backlog/restored
  sample "drift-before"
  auditctl -b 1000 >/dev/null; sample "drift-lowered"
  auditctl -b 1000 >/dev/null; sample "drift-lowered-again"
  sample "drift-unchanged"
  auditctl -e 0 >/dev/null; sample "drift-audit-off"
  auditctl -e 1 >/dev/null
  auditctl -b "$boot_limit" >/dev/null; sample "drift-restored-by-hand"
  # CPU of one sample (user + system of the sampler and what it runs, over 5), and of a fixed shell loop
  # that the host times too (e2e/storm.py REFERENCE_LOOP): the ratio says how much slower this emulated CPU
  # is than the host's.
  cpu() { local t; t=$( { time -p "$@" >/dev/null 2>&1; } 2>&1 ); echo "$t" | awk '/^(user|sys) /{s+=$2}END{printf "%.3f", s}'; }
  # shellcheck disable=SC2016  # the loop is for the inner bash
  echo "E2E-SAMPLE-CPU samples=5 cpu_s=$(cpu bash -c 'for i in 1 2 3 4 5; do /bin/bash '"$sampler"' sample; done')" \
    "ref_cpu_s=$(cpu bash -c 'i=0; while ((i < 50000)); do i=$((i + 1)); done')"
  kill "$listener" 2>/dev/null
  systemctl start cdk-audit-backlog-sample.timer
fi
# The kernel's own lines, as users see them in dmesg / the console.
for pattern in 'audit_backlog=[0-9]* > audit_backlog_limit=' 'audit_lost=' 'kauditd_printk_skb: .* callbacks suppressed'; do
  dmesg | grep -m1 -E "$pattern" | sed 's/^/E2E-STORM-KERNEL /'
done
echo "E2E-STORM-END kernel_lines=$(dmesg | grep -c 'audit_backlog_limit=' || true)"
