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
  lost0=$(status lost); actual0=$(status backlog_wait_time_actual)
  pid=$(status pid)
  out=$(python3 -c "$burst_py" "$mode" "$pid" "$opens" "$pause" 2>&1 | tr '\n' ' ')
  case "$out" in *burst_ms=*) ;; *) echo "E2E-STORM-ERROR run=$run python: $out"; kill -CONT "$pid"; continue ;; esac
  drained=yes; drain || drained=no
  lost=$(( $(status lost) - lost0 ))
  actual=$(( $(status backlog_wait_time_actual) - ${actual0:-0} ))
  if [ "$mode" = mem ]; then
    echo "E2E-MEM limit=$limit opens=$opens lost=$lost $out"
  else
    echo "E2E-STORM limit=$limit wait=$wait opens=$opens pause_s=$pause lost=$lost wait_actual=$actual drained=$drained $out"
  fi
done
auditctl -D >/dev/null
auditctl -b "$boot_limit" --backlog_wait_time "$boot_wait" >/dev/null
# The kernel's own lines, as users see them in dmesg / the console.
for pattern in 'audit_backlog=[0-9]* > audit_backlog_limit=' 'audit_lost=' 'kauditd_printk_skb: .* callbacks suppressed'; do
  dmesg | grep -m1 -E "$pattern" | sed 's/^/E2E-STORM-KERNEL /'
done
echo "E2E-STORM-END kernel_lines=$(dmesg | grep -c 'audit_backlog_limit=' || true)"
