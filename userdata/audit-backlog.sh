#!/bin/bash
# cdk-audit-backlog boot script: sets the kernel audit backlog limit (auditctl -b) now, persists it where
# the next boot loads it, verifies with auditctl -s and reports one console line per decision.
#
# The contract (inputs, block shape, console lines, state file, persistence) is in docs/design.md,
# section "The boot block". Rules for this file, because the renderer (user_data.py) strips comment
# lines, blank lines and indentation and embeds the rest in a quoted here-document:
#   - no here-documents, no multi-line strings, no line continuations inside strings;
#   - no line may start with '#' unless it is a comment;
#   - bash 4.2 compatible (Amazon Linux 1/2, RHEL 7): no empty arrays under set -u, no ${x@Q};
#   - every filesystem path goes through $R (CAB_ROOT, empty on instances) so the tests can run this
#     very script on fixture roots; every external command that can hang runs under timeout;
#   - lines between "# @@CAB_IF <feature>@@" and "# @@CAB_ENDIF@@" are left out of the rendered block
#     when the feature is off at synth time (auto, wait, install, cmdline, unit, monitor); they still check
#     their input at run time, so this file works on its own with every feature. A gate may name several
#     features, "a|b" (any of them on) or "a&!b" (all of them, ! for off), so that a part shared by two
#     features, or a line that differs when both are on, keeps the blocks without the second byte for byte.
# Standalone: sudo CAB_TARGET=8192 bash audit-backlog.sh [MODE] (inputs from the environment, defaults below).
# MODE (first argument):
#   apply    (default; what user data runs) size, persist, apply now with auditctl -b, verify, report; with
#            CAB_UNIT=auto|fixed also install the boot unit (below);
#   install  install the boot unit and exit (nothing else changes; e.g. an image build step):
#            this file -> /usr/local/sbin/cdk-audit-backlog, its inputs -> /etc/cdk-audit-backlog.env,
#            /etc/systemd/system/cdk-audit-backlog.service, wanted by auditd.service and audit-rules.service;
#   boot     what that unit runs on every boot, before the audit rules load: inputs from the env file, size
#            and persist our own rules.d file only (no auditctl -b: the rule load that follows sets it);
#   sample   what the sampler's timer runs every CAB_MONITOR seconds: one auditctl -s, one StatsD datagram to
#            the CloudWatch agent (CAB_STATSD, default 127.0.0.1:8125), printed to stdout as sent; a drift
#            below the target is reported on stderr (the console) and restored once per boot where auditd
#            owns the audit socket. With CAB_MONITOR set, apply and install also install the sampler.
# Commands are found on PATH (cloud-init's, like systemd's and SysV init's, includes /usr/sbin and /sbin).
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
CAB_UNIT="${CAB_UNIT:-off}"
CAB_CMDLINE_LIMIT="${CAB_CMDLINE_LIMIT:-}"
CAB_MONITOR="${CAB_MONITOR:-}"
# @@CAB_INPUTS_END@@

# Globals, one meaning each; the ones that recur are short because the block's size is budgeted
# (docs/design.md, "Optional parts and size"). Functions keep their other names local.
#   R filesystem root (fixtures; empty on instances); E audit config dir; S this script's own file (empty
#   when bash reads it from stdin); V the boot unit's inputs (its env file).
#   Set by st: en enabled, lo lost, bw backlog_wait_time, bl backlog_limit (the kernel's, from auditctl -s).
#   Set by lay: a layout (1 augenrules, 0 audit.rules), f the rules file we persist in, p the limit the
#   next boot runs with, as last measured: the -b its rules load, else the kernel command line's (see cl).
#   Set by cab_main: mo mode (apply, boot, install); t target; s source; kib MemTotal in kB; pm package
#   manager and pkg package (install); w wait time; m method; c the rules need our -b; k the content of f
#   now, x its new content; ok persisted; ch changed a file; d limit the rules load; n limit the kernel
#   gets; o kernel limit before; lost events lost (empty when the kernel did not report); state the state
#   file; v exit status (see the end); pd the audit socket owner's pid, ow its command, ag whether its
#   limit agrees with the target (apply with monitoring).
#   Set by wr (with monitoring): vw, the env file V was written or found up to date in this run.
R=${CAB_ROOT:-}
E=$R/etc/audit
# @@CAB_IF unit|monitor@@
S=${BASH_SOURCE[0]:-}
V=$R/etc/cdk-audit-backlog.env
# @@CAB_ENDIF@@

say() {
  echo "cdk-audit-backlog: $*"
}

has() {
  command -v "$1" >/dev/null
}

# q SECONDS COMMAND...: run COMMAND bounded and quietly (its exit status is what counts).
q() {
  timeout "$@" &>/dev/null
}

# @@CAB_IF auto@@
# The policy formula; twin of BacklogPolicy.limit_for_memory_bytes in policy.py (the agreement is
# property-tested). $1 is MemTotal in kB. The budget bytes*ppm/1e6 is split so 64-bit arithmetic
# cannot overflow; the loop finds the largest power of two <= budget/8970 (1 when there is none,
# which the clamp turns into the minimum as policy.py does, since minimum >= 1).
cab_limit_for_kib() {
  local b=$(($1*1024)) ppm=$CAB_FRACTION_PPM l=1 fit
  # The split is exact: (q*M + r)*ppm/M = q*ppm + r*ppm/M with M = 1e6. fit: how many full-size
  # (8970-byte) audit messages the budget holds; l: the limit.
  fit=$(((ppm*(b/1000000)+b%1000000*ppm/1000000)/8970))
  while ((l*2<=fit)); do l=$((l*2)); done
  echo $((l>CAB_MAX?CAB_MAX:l<CAB_MIN?CAB_MIN:l))
}
# @@CAB_ENDIF@@

# Kernel status from `auditctl -s` (audit 2.4+ "key value" lines, or the older single
# "AUDIT_STATUS: key=value ..." line): en enabled, lo lost, bw backlog_wait_time, bl backlog_limit
# (empty when auditctl cannot report it). The inner `|| :` keeps the ERR trap (inherited under set -E)
# from firing in the substitution when auditctl is missing, after `read` closed the pipe.
st() {
  read -r en lo bw bl < <(timeout 20 auditctl -s 2>/dev/null | awk -F'[ =]' '{for(i=1;i<NF;i++)v[$i]=$(i+1)}END{print v["enabled"]+0,v["lost"]+0,v["backlog_wait_time"]+0,v["backlog_limit"]}' || :) || :
}

# lb FILE...: the value of the last -b line (what augenrules and auditctl -R keep); empty if none.
lb() {
  awk '/^[ \t]*-b/{sub(/-b/,"");b=$1+0}END{print b}' "$@"
}

# mb [SKIP]: the -b that augenrules' merge of rules.d loads (files in `ls -1v` order, *.rules only),
# leaving out file SKIP.
mb() {
  # shellcheck disable=SC2012  # ls -1v is augenrules' own order; rules file names have no newlines
  ls -1v "$E/rules.d" | while read -r fn; do
    [[ $fn != *.rules || $fn = "${1:-}" ]] || cat "$E/rules.d/$fn"
  done | lb
}

# lay: the layout. a=1 and f=our own rules.d file where auditd's start merges rules.d (augenrules:
# systemd units, or SysV with USE_AUGENRULES=yes); else a=0 and f=/etc/audit/audit.rules, which auditd
# loads as it is (Amazon Linux 1). p: the limit the next boot runs with without what we are about to write
# (augenrules: what the other rules.d files load, else the command line's; cab_main measures again after
# writing).
lay() {
  a=0 f=$E/audit.rules
  if [ -d "$E/rules.d" ] && has augenrules && { [ -d "$R/run/systemd/system" ] || grep -qsi '^USE_AUGENRULES="\?y' "$R"/etc/{sysconfig,default}/auditd; }; then
    # Its name sorts after audit.rules and every other letter-named file in `ls -1v` order, so
    # augenrules keeps its -b (last wins).
    a=1 f=$E/rules.d/zz-cdk-audit-backlog.rules
    p=$(mb "${f##*/}")
  else
    p=$(lb "$f") || p=
  fi
  cl
}

# cl: where no rules set -b, p is the kernel command line's audit_backlog_limit= (the kernel keeps the
# last one): the limit the kernel starts with and keeps, so the limit the machine runs without us.
cl() {
  [ -n "$p" ] || p=$(tr ' ' '\n' <"$R/proc/cmdline" | sed -nE 's/^audit_backlog_limit=([0-9]+)$/-b \1/p' | lb) || :
}

# kv KEY VALUE: stdin to stdout with "KEY VALUE" on top (so before any -e line) and without the
# other KEY lines.
kv() {
  awk -v k="$1" -v v="$2" 'BEGIN{print k" "v}$1!~"^"k'
}

# @@CAB_IF unit@@
# cab_unit: install the boot unit on systemd + augenrules systems: this script (S), its inputs (V) and a
# oneshot ordered before the units that load the rules: auditd.service (audit 3.x: ExecStartPost
# augenrules --load) and audit-rules.service (audit 4). It runs before sysinit.target like them, hence
# DefaultDependencies=no and audit-rules.service's own After=. Its target: auto (follows MemTotal on
# every boot, so a resize) with CAB_UNIT=auto (the aspect chose the limit from the instance type), else
# CAB_TARGET (the user's fixed limit, or auto; install mode). A rerun writes nothing.
cab_unit() {
  local y=$CAB_TARGET sbin=$R/usr/local/sbin/cdk-audit-backlog u=$R/etc/systemd/system/cdk-audit-backlog.service res='' svc link
  lay
  if [ $a = 0 ] || [ ! -d "$R/run/systemd/system" ] || [ ! -f "$S" ]; then
    say "unit: not installed (needs systemd, augenrules, a script file)"
    return 6
  fi
  [ "$CAB_UNIT" != auto ] || y=auto
  # With monitoring, wr adds CAB_MONITOR to this file (see the second wr).
  wr "$V" "CAB_TARGET=$y" "CAB_FRACTION_PPM=$CAB_FRACTION_PPM" "CAB_MIN=$CAB_MIN" "CAB_MAX=$CAB_MAX" "CAB_WAIT=$CAB_WAIT" "CAB_KERNEL_CMDLINE=0" "CAB_INSTALL_AUDITD=0" "CAB_ALLOW_LOWER=$CAB_ALLOW_LOWER" "CAB_SOURCE=boot"
  mkdir -p "${sbin%/*}" "${u%/*}" || :
  wr "$sbin" "$(cat "$S")"
  wr "$u" "[Unit]" "Description=cdk-audit-backlog: size the audit backlog before the audit rules load" "DefaultDependencies=no" "After=local-fs.target systemd-tmpfiles-setup.service" "Before=auditd.service audit-rules.service shutdown.target" "Conflicts=shutdown.target" "[Service]" "Type=oneshot" "RemainAfterExit=yes" "ExecStart=/bin/bash ${sbin#"$R"} boot" "StandardOutput=journal+console" "[Install]" "WantedBy=auditd.service audit-rules.service"
  # What `systemctl enable` makes of WantedBy= (without needing a running systemd).
  for svc in auditd audit-rules; do
    link=${u%/*}/$svc.service.wants/${u##*/}
    [ -L "$link" ] || { mkdir -p "${link%/*}" && ln -s "${u#"$R"}" "$link" && res=${res:-installed}; } || res=failed
  done
  say "unit: ${res:-up to date} (boot target $y)"
  [ "$res" != failed ] || return 6
}
# @@CAB_ENDIF@@

# @@CAB_IF unit&!monitor@@
# wr FILE LINE...: FILE holds the LINEs, written only when it differs; sets the caller's res=installed
# when written, failed when it cannot be.
# shellcheck disable=SC2329  # the standalone script's second wr (monitor) replaces it; blocks have one
wr() {
  local file=$1
  shift
  [ "$(printf '%s\n' "$@")" = "$(cat "$file" 2>/dev/null)" ] || { printf '%s\n' "$@" >"$file" && res=${res:-installed}; } || res=failed
}
# @@CAB_ENDIF@@

# @@CAB_IF monitor@@
# wr FILE LINE...: the same, except that the env file V also gets CAB_MONITOR: one file for the boot unit
# and the sampler, whichever writes it, with the same lines (so neither rewrites what the other wrote).
# (The standalone script defines wr twice; this later one is the one that runs.)
wr() {
  local file=$1
  shift
  [ "$file" != "$V" ] || { vw=1; set -- "$@" "CAB_MONITOR=$CAB_MONITOR"; }
  [ "$(printf '%s\n' "$@")" = "$(cat "$file" 2>/dev/null)" ] || { printf '%s\n' "$@" >"$file" && res=${res:-installed}; } || res=failed
}

# cab_mon: install the sampler on systemd systems: this script (S) and its inputs (V), shared with the boot
# unit, a oneshot that runs `sample` and a timer every CAB_MONITOR seconds, enabled as `systemctl enable`
# would (a link in timers.target.wants: no running systemd needed) and, when this run installed something,
# started now (the boot that installs it has reached timers.target already). The sampler's stdout (the
# datagram's lines) goes nowhere, its stderr (a drift line) to the journal and the console. A rerun writes
# nothing and calls no systemctl.
cab_mon() {
  local i=$CAB_MONITOR sbin=$R/usr/local/sbin/cdk-audit-backlog u=$R/etc/systemd/system/cdk-audit-backlog-sample res='' link
  if [ ! -d "$R/run/systemd/system" ] || [ ! -f "$S" ]; then
    say "monitor: not installed (needs systemd, a script file)"
    return 6
  fi
  # The boot unit's wr wrote V in this run when it is installed; else the sampler's own inputs (the target
  # when no run recorded one, and its policy).
  [ -n "${vw:-}" ] || wr "$V" "CAB_TARGET=$CAB_TARGET" "CAB_FRACTION_PPM=$CAB_FRACTION_PPM" "CAB_MIN=$CAB_MIN" "CAB_MAX=$CAB_MAX"
  link=${u%/*}/timers.target.wants/${u##*/}.timer
  mkdir -p "${sbin%/*}" "${link%/*}" || :
  wr "$sbin" "$(cat "$S")"
  wr "$u.service" "[Unit]" "Description=cdk-audit-backlog sampler" "[Service]" "Type=oneshot" "ExecStart=/bin/bash ${sbin#"$R"} sample" "StandardOutput=null" "StandardError=journal+console"
  wr "$u.timer" "[Unit]" "Description=cdk-audit-backlog sampler every ${i}s" "[Timer]" "OnBootSec=$i" "OnUnitActiveSec=$i" "AccuracySec=1s" "[Install]" "WantedBy=timers.target"
  [ -L "$link" ] || { ln -s "${u#"$R"}.timer" "$link" && res=${res:-installed}; } || res=failed
  [ "$res" != installed ] || { q 60 systemctl daemon-reload; q 20 systemctl --no-block restart "${u##*/}.timer"; } || :
  say "monitor: sampler every ${i}s ${res:-up to date}"
  [ "$res" != failed ] || return 6
}

# ss: what the sampler reads, from one `auditctl -s` (5 s at most: it runs every interval), parsed by bash
# itself (every program started costs the sampler more than the reading; both output formats, as st reads):
# sets en lo bk (backlog) bl bw wa (backlog_wait_time_actual) pd (the socket owner's pid); bw and wa are "-"
# where this kernel has none. Fails, setting nothing, when auditctl reports no backlog_limit.
ss() {
  local a
  a=$(timeout 5 auditctl -s 2>/dev/null) || :
  [[ $a = *backlog_limit* ]] || return 1
  en=0 lo=0 bk=0 bl=0 bw=- wa=- pd=0
  # shellcheck disable=SC2086  # the status split into words: each known key is followed by its value
  set -- ${a//=/ }
  while (($# > 1)); do
    case $1 in
      enabled) en=$2 ;; lost) lo=$2 ;; backlog) bk=$2 ;; backlog_limit) bl=$2 ;;
      backlog_wait_time) bw=$2 ;; backlog_wait_time_actual) wa=$2 ;; pid) pd=$2 ;;
    esac
    shift
  done
}

# cm PID: ow, the command that owns the audit socket: PID's comm, with anything but letters, digits and _.-
# made _ (it becomes a StatsD tag), none for pid 0, unknown when it cannot be read.
cm() {
  ow=none
  [ "$1" = 0 ] || { read -r ow <"$R/proc/$1/comm"; } 2>/dev/null || ow=
  ow=${ow//[^A-Za-z0-9_.-]/_}
  ow=${ow:-unknown}
}

# sd KEY LINE: LINE to stderr (the sampler's console; its stdout is the datagram) unless the last line said
# was for KEY (z/said), so a timer repeats nothing; no KEY clears it.
sd() {
  local k=
  { read -r k <"$z/said"; } 2>/dev/null || :
  if [ -z "$1" ]; then
    [ -z "$k" ] || : >"$z/said"
  elif [ "$1" != "$k" ]; then
    echo "$1" >"$z/said"
    say "$2" >&2
  fi
}

# cab_sample: the sampler (mode sample). The metric names and StatsD types are the contract in
# monitoring_metrics.py. State lives in z, under /run (tmpfs: emptied at boot, nothing left on disk): the
# previous lost counter, the last drift line's key (owner, limit and what was done: a restore that did not
# hold is said once more), whether this boot restored the limit once.
# lost: the increase since the previous sample; the counter itself when it went down (a boot reset it) or
# there is none. Target: the state file's (what the last acting apply or boot run chose), else the inputs'.
# Drift (docs/design.md, "Drift"): where auditd (or no one) owns the socket and the rules are not immutable,
# auditctl -b TARGET once per boot; another owner's limit is only reported, so we never fight it in a loop.
cab_sample() {
  local z=$R/run/cdk-audit-backlog a=${CAB_STATSD:-127.0.0.1:8125} bk wa t p n ow dr x l
  trap 'say "error $LINENO: $BASH_COMMAND" >&2' ERR
  [ -d "$z" ] || mkdir -p "$z"
  if ! ss; then
    sd - "sample: no audit status (auditctl -s)"
    exit 3
  fi
  # Builtins only, from here to the datagram (see ss).
  t=
  { while IFS='=' read -r x l; do
    [ "$x" != target ] || [[ ! $l =~ ^[0-9]+$ ]] || t=$l
  done <"$R/var/lib/cdk-audit-backlog/state"; } 2>/dev/null || :
  if [ -z "$t" ]; then
    t=$CAB_TARGET
    if [ "$t" = auto ]; then
      kib=$(awk '/^MemTotal:/{print $2}' "$R/proc/meminfo" 2>/dev/null) || :
      t=$(cab_limit_for_kib "${kib:-0}")
    fi
  fi
  p=
  { read -r p <"$z/lost"; } 2>/dev/null || :
  n=$lo
  [[ ! $p =~ ^[0-9]+$ ]] || ((lo<p)) || n=$((lo-p))
  echo "$lo" >"$z/lost"
  cm "$pd"
  dr=$((bl>0&&bl<t?t-bl:0))
  l=("AuditLostEvents:$n|c" "AuditBacklog:$bk|g" "AuditBacklogLimit:$bl|g" "AuditBacklogUsePercent:$((bl>0?bk*100/bl:0))|g")
  [ "$bw" = - ] || l+=("AuditBacklogWaitTime:$bw|g")
  [ "$wa" = - ] || l+=("AuditBacklogWaitTimeActual:$wa|g")
  l+=("AuditBacklogTarget:$t|g" "AuditBacklogDrift:$dr|g" "AuditSocketOwner:1|g|#Owner:$ow")
  printf -v x '%s\n' "${l[@]}"
  x=${x%$'\n'}
  echo "$x"
  # One datagram through bash's own UDP socket (/dev/udp is bash's, not a file: no $R). bash writes a
  # builtin's output line by line (one datagram each), so cat, which has the whole here-string at once,
  # writes it in one. Nothing listening loses it silently; a send that fails is not an error.
  { cat <<<"$x" >"/dev/udp/${a%:*}/${a##*:}"; } 2>/dev/null || :
  if ((dr)); then
    x="left to it"
    if [ "$ow" = auditd ] || [ "$ow" = none ]; then
      if [ "$en" = 2 ]; then
        x="immutable, left for the next boot"
      elif [ -e "$z/restored" ]; then
        x="restored once this boot already, left"
      else
        : >"$z/restored"
        x="restore failed"
        ! q 5 auditctl -b "$t" || x="restored"
      fi
    fi
    sd "$ow $bl $x" "drift: $ow (pid $pd) has backlog_limit $bl, our target $t: $x"
  else
    sd ""
  fi
}
# @@CAB_ENDIF@@

# @@CAB_IF cmdline@@
# gv: the audit_backlog_limit= each kernel gets at the next boot (the last one on its line, or -), one line
# per kernel: grubby's args= lines, else the linux lines of the grub.cfg GRUB regenerated.
gv() {
  { if has grubby; then timeout 60 grubby --info=ALL | grep '^args='; else grep -sh '^[[:space:]]*linux' "$R"/boot/grub*/grub.cfg; fi || :; } | tr -d '"' | awk '{v="-";for(i=1;i<=NF;i++)if($i~/^audit_backlog_limit=[0-9]+$/)v=substr($i,21);print v}'
}

# gk N: every kernel of the next boot gets N (and there is one).
gk() {
  gv | awk -v n="$1" '$1!=n{e=1}END{exit e||!NR}'
}

# cab_cmdline N: audit_backlog_limit=N on the command line of every installed kernel, once, where the next
# boot reads it: grubby where present (BLS); else our own drop-in, which sorts last in /etc/default/grub.d
# (read after /etc/default/grub, whose settings a cloud image's drop-in can set again), or /etc/default/grub
# itself (a GRUB_CMDLINE_LINUX line added if it has none). A larger value already there (0: no limit) is
# kept unless allow_lower. Then it reads back what the next boot gets: "not applied" when that is not N.
# n: the value; g: GRUB's defaults file; w: our drop-in, l its line; was: both before; how: the tool that set it,
# failed, why not, or empty (already set).
cab_cmdline() {
  local n g=$R/etc/default/grub w=$R/etc/default/grub.d/zz-cdk-audit-backlog.cfg was l how="no grubby or grub"
  n=$(gv | awk -v n="$1" -v a="$CAB_ALLOW_LOWER" '$1!="-"&&!a&&n&&(!$1||$1>n){n=$1}END{print n}')
  if has grubby; then
    how=
    if ! gk "$n"; then
      how=grubby
      q 120 grubby --update-kernel=ALL --args="audit_backlog_limit=$n" || how=failed
    fi
  elif [ -f "$g" ]; then
    how=
    was=$(cat "$g" "$w" 2>/dev/null) || :
    if [ -d "${w%/*}" ]; then
      l="GRUB_CMDLINE_LINUX=\"\$GRUB_CMDLINE_LINUX audit_backlog_limit=$n\""
      [ "$(cat "$w" 2>/dev/null)" = "$l" ] || echo "$l" >"$w"
    elif ! grep -q "^GRUB_CMDLINE_LINUX=.*[\" ]audit_backlog_limit=${n}[\" ]" "$g"; then
      grep -q '^GRUB_CMDLINE_LINUX=' "$g" || echo 'GRUB_CMDLINE_LINUX=""' >>"$g"
      sed -i -E "/^GRUB_CMDLINE_LINUX=/{s/ ?audit_backlog_limit=[0-9]*//g;s/\"\$/ audit_backlog_limit=$n\"/}" "$g"
    fi
    if [ "$was" != "$(cat "$g" "$w" 2>/dev/null)" ] || ! gk "$n"; then
      how=update-grub
      if has $how; then q 300 $how; else how=grub2-mkconfig; q 300 $how -o "$R/boot/grub2/grub.cfg"; fi || how=failed
    fi
  fi
  [ "${how:0:1}" = n ] || gk "$n" || how="${how:-already set}, not applied"
  say "cmdline: audit_backlog_limit=$n ${how:-already set}"
}
# @@CAB_ENDIF@@

cab_main() {
  set -Eeuo pipefail
  trap 'say "error $LINENO: $BASH_COMMAND"' ERR
  umask 027
  # Its globals (mo t s kib pm pkg w m c k x ok ch d n o lost state v): see the legend at the top.
  # @@CAB_IF unit|monitor@@
  mo=${1:-apply}
  # @@CAB_ENDIF@@
  # @@CAB_IF monitor@@
  if [ "$mo" = sample ]; then
    # The inputs the boot unit or the sampler's install left (the target when no run recorded one).
    if [ -f "$V" ]; then
      # shellcheck disable=SC1090  # our own root-owned file, written by wr
      . "$V"
    fi
    cab_sample
    exit 0
  fi
  # @@CAB_ENDIF@@
  # @@CAB_IF unit@@
  if [ "$mo" = install ]; then
    cab_unit || return
    # @@CAB_ENDIF@@
    # @@CAB_IF unit&monitor@@
    [ -z "$CAB_MONITOR" ] || cab_mon || return
    # @@CAB_ENDIF@@
    # @@CAB_IF unit@@
    return 0
  fi
  [ "$mo" = apply ] || [ "$mo" = boot ] || { say "unknown mode $mo (apply, boot, install)"; return 2; }
  # The boot unit's inputs (written by cab_unit) override the ones this copy of the script was given.
  if [ "$mo" = boot ] && [ -f "$V" ]; then
    # shellcheck disable=SC1090  # our own root-owned file, written by cab_unit
    . "$V"
  fi
  # @@CAB_ENDIF@@
  t=$CAB_TARGET s=$CAB_SOURCE w=$CAB_WAIT m=none c=0 ok=yes ch=0 v=0
  # @@CAB_IF auto@@
  if [ "$t" = auto ]; then
    # No MemTotal (no /proc/meminfo): 0 kB, for which the formula gives the minimum.
    kib=$(awk '/^MemTotal:/{print $2}' "$R/proc/meminfo" 2>/dev/null) || :
    t=$(cab_limit_for_kib "${kib:-0}")
    s="$s, MemTotal ${kib:-?} kB"
  fi
  # @@CAB_ENDIF@@
  say "target $t ($s)"
  # @@CAB_IF install@@
  if ! has auditctl && [ "$CAB_INSTALL_AUDITD" = 1 ]; then
    for pm in dnf yum zypper apt-get; do has $pm && break; done
    pkg=audit
    if [ "$pm" = apt-get ]; then
      q 300 apt-get update || :
      pkg=auditd
    fi
    if DEBIAN_FRONTEND=noninteractive q 600 "$pm" install -y $pkg; then
      say "install: $pkg ($pm)"
    else
      say "install: $pkg failed ($pm)"
    fi
  fi
  # @@CAB_ENDIF@@
  st
  o=${bl:-?} d=$t
  if ! has auditctl; then
    say "no auditd: nothing applied"
    ok=- v=3
  else
    # @@CAB_IF wait@@
    # `auditctl -h` exits 255 after its usage text (audit 3.0.9): only grep's status may count.
    if [ -n "$w" ] && ! { timeout 20 auditctl -h 2>&1 || :; } | grep -q backlog_wait_time; then
      say "backlog_wait_time: unsupported by auditctl"
      w=
    fi
    # @@CAB_ENDIF@@
    lay
    if [ "$t" = "$p" ]; then
      say "persist: -b $t already"
    # -b 0 is no limit at all (the kernel skips the backlog check): the largest, never raised to a number.
    # (CAB_ALLOW_LOWER is 0 or 1, so arithmetic reads it as it is.)
    elif ((CAB_ALLOW_LOWER||t>${p:-0}&&${p:-1})); then
      c=1
    else
      d=$p
      say "persist: kept -b $p"
    fi
    # k: what f holds now; x: its new content (our own file is rebuilt from nothing; audit.rules is edited).
    k=$(cat "$f" 2>/dev/null) || k=
    x=$k
    [ $a = 0 ] || x=
    [ $c = 0 ] || x=$(printf %s "$x" | kv -b "$d")
    # @@CAB_IF wait@@
    [ -z "$w" ] || x=$(printf %s "$x" | kv --backlog_wait_time "$w")
    # @@CAB_ENDIF@@
    if [ "$x" != "$k" ]; then
      # A backup of audit.rules (if any) before our first edit; our own file needs none (an emptied
      # one stays).
      if { [ $a = 1 ] || [ -e "$f.cab-orig" ] || [ ! -e "$f" ] || cp -p "$f" "$f.cab-orig"; } && printf '%s\n' "$x" >"$f"; then
        ch=1
        say "persist: wrote ${f#"$R"}"
      else
        ok=no
        say "persist: cannot write ${f#"$R"}"
      fi
    fi
    # augenrules: regenerate audit.rules from rules.d (no load) after a change, so that a plain
    # `auditctl -R audit.rules` also gets it; check the merge keeps our -b (audit.rules edits always do).
    if [ $a = 1 ]; then
      [ $ch = 0 ] || [ "$en" = 2 ] || q 60 augenrules || say "augenrules failed"
      p=$(mb)
      cl
      if [ $ok = yes ] && [ "$p" != "$d" ]; then
        ok=no
        say "persist: rules load -b ${p:-none}"
      fi
    fi
    n=$d
    # The gates below leave the apply part unconditional in blocks without the unit.
    # @@CAB_IF unit@@
    if [ "$mo" = boot ]; then
      # The boot unit runs before the rules load, and that load sets the merged limit p: no auditctl
      # here (no race with it). Method "rules" when this run changed what it loads.
      [ $ch = 0 ] || m=rules
      bl=${p:-$d}
    else
    # @@CAB_ENDIF@@
      # A larger running limit is kept: one above d, or 0 (no limit) where d is a number.
      if ((!CAB_ALLOW_LOWER&&d&&(${bl:--1}==0||${bl:-0}>d))); then
        n=$bl
        say "apply: kept $bl"
      fi
      if [ "$en" = 2 ]; then
        m=next-boot
        say "immutable: takes effect at next boot"
      # @@CAB_IF monitor@@
      # Another program owns the audit socket (auditbeat, osqueryd, go-audit...): its limit is its decision.
      # Said in one line, whether it agrees with the target (at least the target, or 0: no limit) or not
      # (exit 7); never changed (docs/design.md, "Drift").
      elif [ -n "$CAB_MONITOR" ] && ss && cm "$pd" && [ "$ow" != auditd ] && [ "$ow" != none ]; then
        ag="agrees with"
        ((!bl||bl>=t)) || { ag="is below"; v=7; }
        say "owner: $ow (pid $pd) has the audit socket, its backlog_limit $bl $ag our target $t: left to it"
      # @@CAB_ENDIF@@
      else
        [ "$bl" = "$n" ] || ! q 20 auditctl -b "$n" || m=auditctl
        # @@CAB_IF wait@@
        if [ -n "$w" ] && [ "$bw" != "$w" ]; then
          m=auditctl
          q 20 auditctl --backlog_wait_time "$w" || say "backlog_wait_time $w refused"
        fi
        # @@CAB_ENDIF@@
        st
        [ "$bl" = "$n" ] || { say "verify failed"; v=4; }
      fi
    # @@CAB_IF unit@@
    fi
    # @@CAB_ENDIF@@
  fi
  # @@CAB_IF cmdline@@
  # A compliance preset may fix the command line's value (the STIG checks for exactly 8192).
  [ "$CAB_KERNEL_CMDLINE" != 1 ] || cab_cmdline "${CAB_CMDLINE_LIMIT:-$d}"
  # @@CAB_ENDIF@@
  # @@CAB_IF unit@@
  # A unit that cannot be installed is reported; it does not change the exit status of apply.
  [ "$mo" != apply ] || [ "$CAB_UNIT" = off ] || cab_unit || :
  # @@CAB_ENDIF@@
  # @@CAB_IF monitor@@
  # So is a sampler that cannot be installed.
  [ "$mo" != apply ] || [ -z "$CAB_MONITOR" ] || cab_mon || :
  # @@CAB_ENDIF@@
  lost=${bl:+$lo}
  say "backlog_limit $o -> ${bl:-?} ($s; method $m; lost ${lost:-?})"
  state=$R/var/lib/cdk-audit-backlog/state
  # Written when this run changed something: a file (ch=1), or the kernel (method auditctl; not none
  # or next-boot). So a rerun, immutable or not, leaves it alone.
  if [[ $ch$m != 0n* ]] || [ ! -e "$state" ]; then
    mkdir -p "${state%/*}"
    printf '%s\n' "target=$t" "limit=${bl:-?}" "old=$o" "persisted=$ok" "method=$m" "lost=${lost:-?}" "source=$s" >"$state"
  fi
  # The exit status, for a caller that reads it (an SSM association: non-zero makes the instance
  # NON_COMPLIANT; user data ignores it; the boot unit shows failed): 0 done, nothing to do, or immutable
  # (next boot); 3 no auditctl; 4 the kernel's limit is not the one applied; 5 not persisted (the next
  # boot reverts); 6 (install mode) the boot unit (or, with monitoring, the sampler) could not be installed;
  # 7 (with monitoring) another program owns the audit socket and its limit is below the target: left to
  # it. Mode sample exits 0, or 3 when auditctl -s reports nothing.
  [ $ok$v != no0 ] || v=5
  exit $v
}

cab_main "$@" </dev/null
