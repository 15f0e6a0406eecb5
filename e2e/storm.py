"""``make storm``: the audit storm our block prevents, measured on a real kernel.

One boot of the AL2-like image (rules.d ``-b 320``) with the example app's m5.large launch template user
data in a 2 vCPU / 8 GiB guest (an m5.large's shape). The block tunes 320 -> 8192 at boot; then the guest's
storm runner (``guest/e2e-storm.sh``) replays the same burst (openat calls while auditd is SIGSTOPped for a
fixed pause) at each limit:

* the table: limit 320 (AL2's) vs the tuned limit, each with wait 0 and with the boot's wait time;
* the headroom curve: records lost against burst size for 320, tuned and 4x tuned (wait 0), drawn into
  ``docs/storm-headroom.svg``;
* kernel memory while the tuned (and the 4x) queue is full, beside the formula's worst case limit x 8970;
* the apply step's share of boot time, from the guest's journal and cloud-init's event log.

Prints the table and ``storm: lost default=X tuned=Y; stall default=Ams tuned=Bms``; writes the raw
results to ``.cache/e2e/storm.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from . import scenarios, vm

REPO = Path(__file__).resolve().parent.parent
OPENS, PAUSE = 1000, 5
BURSTS = (500, 1000, 2000, 4000, 8000, 16000)
CURVE_LIMITS = ("320", "boot", "boot4")
WORST_CASE_BYTES = 8970  # MAX_AUDIT_MESSAGE_LENGTH per queued record
SERIAL_BLOCK = re.compile(r"\[\s*(\d+\.\d+)\] cloud-init\[\d+\]: cdk-audit-backlog: ")


def spec(opens: int = OPENS, pause: int = PAUSE, bursts: Sequence[int] = BURSTS, memory: bool = True) -> str:
    runs = [f"{limit}:{wait}:{opens}:{pause}" for wait in ("0", "boot") for limit in ("320", "boot")]
    runs += [f"{limit}:0:{n}:{pause}" for limit in CURVE_LIMITS for n in bursts]
    if memory:
        runs += ["mem:boot:8000", "mem:boot4:30000"]
    return ",".join(runs)


def _ms(r: Dict[str, str]) -> int:
    return int(r["burst_ms"])


def analyse(run: vm.Run, opens: int = OPENS) -> Dict[str, object]:
    if run.storm_errors or not run.storm:
        raise RuntimeError(f"the storm did not run cleanly ({len(run.storm)} runs); serial log {run.log}:\n"
                           + "\n".join(run.storm_errors[:5]))
    rep = run.boot(1)
    begin = run.storm_begin
    tuned, boot_wait = begin["boot_limit"], begin["boot_wait"]
    main, curve = run.storm[:4], run.storm[4:]  # spec() order: the table's four runs come first
    if [(r["limit"], r["wait"], r["opens"]) for r in main] != [
            (l, w, str(opens)) for w in ("0", boot_wait) for l in ("320", tuned)]:
        raise RuntimeError(f"unexpected storm runs: {main}")
    by = {(r["limit"], r["wait"]): r for r in main}
    default_lost = sum(int(by[("320", w)]["lost"]) for w in ("0", boot_wait) if ("320", w) in by)
    tuned_lost = sum(int(by[(tuned, w)]["lost"]) for w in ("0", boot_wait) if (tuned, w) in by)
    stall_default = _ms(by[("320", boot_wait)]) if ("320", boot_wait) in by else None
    stall_tuned = _ms(by[(tuned, boot_wait)]) if (tuned, boot_wait) in by else None
    final = float(rep["cloud_final_done_s"].replace("e-3", "")) / 1000 if "e-3" in rep["cloud_final_done_s"] \
        else float(rep["cloud_final_done_s"])
    scripts_user = float(rep["scripts_user_s"]) if rep.get("scripts_user_s") else None
    block_span = float(rep["block_last_s"]) - float(rep["block_first_s"])
    # The same from the serial log itself: the guest's timestamps on the block's console lines.
    stamps = [float(m.group(1)) for m in (SERIAL_BLOCK.search(t) for _, t in run.lines) if m]
    return {
        "accel": run.accel,
        "vm": "2 vCPU (TCG), 8 GiB",
        "kernel": rep["kernel"],
        "hz": begin.get("hz"),
        "tuned": int(tuned),
        "boot_wait": int(boot_wait),
        "result_line": scenarios.result_line(rep),
        "burst": {"opens": opens, "pause_s": PAUSE},
        "table": main,
        "curve": curve,
        "memory": run.mem,
        "kernel_lines": run.storm_kernel,
        "summary": {"lost_default": default_lost, "lost_tuned": tuned_lost,
                    "stall_default_ms": stall_default, "stall_tuned_ms": stall_tuned},
        "boot": {"cloud_final_done_s": final, "scripts_user_s": scripts_user, "block_lines_span_s": block_span,
                 "serial_block_first_s": stamps[0] if stamps else None,
                 "serial_block_last_s": stamps[-1] if stamps else None,
                 "apply_share": (scripts_user / final) if scripts_user else None,
                 "run_seconds": run.elapsed_s},
    }


def table(res: Dict[str, object]) -> str:
    rows = ["| limit | wait (ticks) | opens | lost (kernel counter) | burst ms | backlog_wait_time_actual |",
            "|---:|---:|---:|---:|---:|---:|"]
    for r in res["table"]:  # type: ignore[union-attr]
        rows.append(f"| {r['limit']} | {r['wait']} | {r['opens']} | {int(r['lost']):,} | {int(r['burst_ms']):,} "
                    f"| {r.get('wait_actual', '?')} |")
    return "\n".join(rows)


def curve_table(res: Dict[str, object]) -> str:
    curve = res["curve"]
    limits = sorted({int(r["limit"]) for r in curve})  # type: ignore[union-attr]
    bursts = sorted({int(r["opens"]) for r in curve})  # type: ignore[union-attr]
    lost = {(int(r["limit"]), int(r["opens"])): int(r["lost"]) for r in curve}  # type: ignore[union-attr]
    rows = ["| opens in burst | " + " | ".join(f"lost at -b {l}" for l in limits) + " |",
            "|---:|" + "---:|" * len(limits)]
    for b in bursts:
        rows.append(f"| {b:,} | " + " | ".join(f"{lost.get((l, b), '-'):,}" if (l, b) in lost else "-"
                                                for l in limits) + " |")
    return "\n".join(rows)


RECORDS_PER_OPEN = 5  # SYSCALL, CWD, PATH, PROCTITLE, EOE


def memory_lines(res: Dict[str, object]) -> List[str]:
    """Slab growth while auditd is stopped after a saturating burst, beside the formula's worst case.

    The kernel counts one lost per refused event (a syscall's later records are not attempted), so the
    records it accepted are about (opens - lost) x 5; they sit in the audit queue (``backlog``), kauditd's
    hold/retry queues and auditd's socket buffer, all of it slab memory.
    """
    out = []
    for m in res["memory"]:  # type: ignore[union-attr]
        limit, opens, lost = int(m["limit"]), int(m["opens"]), int(m["lost"])
        growth = int(m["slab_growth"])
        records = max(opens - lost, 1) * RECORDS_PER_OPEN
        worst = limit * WORST_CASE_BYTES
        out.append(
            f"-b {limit:,}: Slab +{growth / 2**20:.1f} MiB (SUnreclaim +{int(m['sunreclaim_growth']) / 2**20:.1f}, "
            f"skbuff+kmalloc caches +{int(m['skb_kmalloc_growth']) / 2**20:.1f}) for ~{records:,} records accepted "
            f"(({opens:,} opens - {lost:,} lost) x {RECORDS_PER_OPEN}; backlog {int(m['queued']):,} at the time) = "
            f"~{growth / records:,.0f} B per record; formula worst case {worst / 2**20:.1f} MiB "
            f"({WORST_CASE_BYTES:,} B per record); measured = {100 * growth / worst:.0f} % of it"
        )
    return out


def svg(res: Dict[str, object], path: Path) -> None:
    """Lost records against burst size, one line per limit, written by hand (no plotting dependency)."""
    curve = res["curve"]
    limits = sorted({int(r["limit"]) for r in curve})  # type: ignore[union-attr]
    bursts = sorted({int(r["opens"]) for r in curve})  # type: ignore[union-attr]
    # y: the kernel's lost counter as a share of the burst's openat calls (one refused event counts once).
    pts = {(int(r["limit"]), int(r["opens"])): 100.0 * int(r["lost"]) / int(r["opens"])  # type: ignore[union-attr]
           for r in curve}  # type: ignore[union-attr]
    W, H, L, R, T, B = 720, 420, 80, 170, 50, 60
    pw, ph = W - L - R, H - T - B
    ytop, step = 100.0, 20.0
    x = lambda b: L + pw * (math.log2(b) - math.log2(bursts[0])) / max(math.log2(bursts[-1] / bursts[0]), 1)
    y = lambda v: T + ph * (1 - v / ytop)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    tuned = res["tuned"]
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="15" font-weight="bold">Audit events lost vs burst size '
         f'(auditd stopped {PAUSE} s, backlog_wait_time 0)</text>',
         f'<text x="{L}" y="38" fill="#555">{res["kernel"]}, {res["vm"]}; 5 records per openat</text>']
    for i in range(int(round(ytop / step)) + 1):
        v = i * step
        o.append(f'<line x1="{L}" x2="{L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f} %</text>')
    for b in bursts:
        o.append(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="{T}" y2="{T + ph}" stroke="#eee"/>')
        o.append(f'<text x="{x(b):.1f}" y="{T + ph + 18}" text-anchor="middle">{b:,}</text>')
    o.append(f'<text x="{L + pw / 2}" y="{H - 15}" text-anchor="middle">openat calls in the burst (log scale)</text>')
    o.append(f'<text x="18" y="{T + ph / 2}" transform="rotate(-90 18 {T + ph / 2})" text-anchor="middle">'
             f'events lost (kernel audit_lost / openat calls)</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for i, limit in enumerate(limits):
        c = colors[i % len(colors)]
        xs = [(x(b), y(pts[(limit, b)])) for b in bursts if (limit, b) in pts]
        o.append(f'<polyline fill="none" stroke="{c}" stroke-width="2.5" points="'
                 + " ".join(f"{a:.1f},{v:.1f}" for a, v in xs) + '"/>')
        for a, v in xs:
            o.append(f'<circle cx="{a:.1f}" cy="{v:.1f}" r="3.5" fill="{c}"/>')
        label = {320: "-b 320 (AL2 default)", tuned: f"-b {limit} (tuned)"}.get(limit, f"-b {limit} (4x tuned)")
        ly = T + 20 + 22 * i
        o.append(f'<line x1="{L + pw + 12}" x2="{L + pw + 32}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/>')
        o.append(f'<text x="{L + pw + 38}" y="{ly + 4}">{label}</text>')
    o.append("</svg>")
    path.write_text("\n".join(o) + "\n")


def summary_line(res: Dict[str, object]) -> str:
    s = res["summary"]
    return (f"storm: lost default={s['lost_default']} tuned={s['lost_tuned']}; "  # type: ignore[index]
            f"stall default={s['stall_default_ms']}ms tuned={s['stall_tuned_ms']}ms")  # type: ignore[index]


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.storm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", default=",".join(map(str, BURSTS)), help="burst sizes for the headroom curve")
    ap.add_argument("--no-plot", action="store_true", help="do not rewrite docs/storm-headroom.svg")
    args = ap.parse_args(list(argv))
    bursts = [int(b) for b in args.bursts.split(",") if b]
    started = time.monotonic()
    s = scenarios.al2_layout(storm_spec=spec(bursts=bursts))
    run = s.runs[0]
    res = analyse(run)
    res["total_seconds"] = time.monotonic() - started
    out = REPO / ".cache" / "e2e" / "storm.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"VM: {res['vm']}, accel {res['accel']}, kernel {res['kernel']} (HZ={res['hz']}); block said: "
          f"{res['result_line']}")
    print(f"burst: {OPENS} openat calls while auditd is SIGSTOPped for {PAUSE} s; wait {res['boot_wait']} ticks is "
          f"the boot's backlog_wait_time\n")
    print(table(res) + "\n")
    print(curve_table(res) + "\n")
    for line in res.get("kernel_lines", []):  # type: ignore[union-attr]
        print("kernel said: " + line)
    for line in memory_lines(res):
        print("memory: " + line)
    b = res["boot"]
    share = f"{b['apply_share'] * 100:.2f} %" if b["apply_share"] is not None else "n/a"  # type: ignore[index]
    print(f"apply step: user data (block + the template's one line) took {b['scripts_user_s']} s of "  # type: ignore[index]
          f"{b['cloud_final_done_s']:.1f} s to the end of cloud-final = {share}; block console lines "  # type: ignore[index]
          f"spanned {b['block_lines_span_s']:.2f} s")  # type: ignore[index]
    if b["serial_block_first_s"] is not None:  # type: ignore[index]
        first, last = b["serial_block_first_s"], b["serial_block_last_s"]  # type: ignore[index]
        print(f"serial log: block lines at {first:.2f} s .. {last:.2f} s after kernel start: "
              f"{last - first:.2f} s = {100 * (last - first) / last:.1f} % of the time to the result line")
    if not args.no_plot:
        svg(res, REPO / "docs" / "storm-headroom.svg")
        print("plot: docs/storm-headroom.svg")
    print(f"run: {run.elapsed_s:.0f} s in the VM, {res['total_seconds']:.0f} s in all; raw results {out.relative_to(REPO)}")
    print(summary_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
