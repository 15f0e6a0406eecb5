"""``make storm``: the audit storm our block prevents, measured on a real kernel.

One boot of the AL2-like image (rules.d ``-b 320``) of one suite (``--suite``: bookworm = Debian 12, kernel
6.1; trixie = Debian 13, kernel 6.12) with the example app's m5.large launch template user
data in a 2 vCPU / 8 GiB guest (an m5.large's shape). The block tunes 320 -> 8192 at boot; then the guest's
storm runner (``guest/e2e-storm.sh``) replays the same burst (openat calls while auditd is SIGSTOPped for a
fixed pause) at each limit:

* the table: limit 320 (AL2's) vs the tuned limit, each with wait 0 and with the boot's wait time;
* the headroom curve: records lost against burst size for 320, tuned and 4x tuned (wait 0), drawn with
  matplotlib into ``docs/storm-headroom.png`` together with the other suite's last run (both kernels);
* kernel memory while the tuned (and the 4x) queue is full, beside the formula's worst case limit x 8970;
* the apply step's share of boot time, from the guest's journal and cloud-init's event log.

Prints the table and ``storm: lost default=X tuned=Y; stall default=Ams tuned=Bms``; writes the raw
results to ``.cache/e2e/storm-<suite>.json`` (the plot reads every suite's from there).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from cdk_audit_backlog.monitoring_metrics import DEFAULT_INTERVAL_S

from . import image as images
from . import scenarios, vm

REPO = Path(__file__).resolve().parent.parent
OPENS, PAUSE = 1000, 5
BURSTS = (500, 1000, 2000, 4000, 8000, 16000)
CURVE_LIMITS = ("320", "boot", "boot4")
WORST_CASE_BYTES = 8970  # MAX_AUDIT_MESSAGE_LENGTH per queued record
PLOT = REPO / "docs" / "storm-headroom.png"
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
            (limit, w, str(opens)) for w in ("0", boot_wait) for limit in ("320", tuned)]:
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
        "summary": {
            "lost_default": default_lost,
            "lost_tuned": tuned_lost,
            "stall_default_ms": stall_default,
            "stall_tuned_ms": stall_tuned,
        },
        "boot": {
            "cloud_final_done_s": final,
            "scripts_user_s": scripts_user,
            "block_lines_span_s": block_span,
            "serial_block_first_s": stamps[0] if stamps else None,
            "serial_block_last_s": stamps[-1] if stamps else None,
            "apply_share": (scripts_user / final) if scripts_user else None,
            "run_seconds": run.elapsed_s,
        },
    }


def table(res: Dict[str, object]) -> str:
    rows = [
        "| kernel | limit | wait (ticks) | opens | lost (kernel counter) | burst ms "
        "| backlog_wait_time_actual |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["table"]:  # type: ignore[union-attr]
        rows.append(f"| {res['kernel']} | {r['limit']} | {r['wait']} | {r['opens']} | {int(r['lost']):,} "
                    f"| {int(r['burst_ms']):,} | {r.get('wait_actual', '?')} |")
    return "\n".join(rows)


def curve_table(res: Dict[str, object]) -> str:
    curve = res["curve"]
    limits = sorted({int(r["limit"]) for r in curve})  # type: ignore[union-attr]
    bursts = sorted({int(r["opens"]) for r in curve})  # type: ignore[union-attr]
    lost = {(int(r["limit"]), int(r["opens"])): int(r["lost"]) for r in curve}  # type: ignore[union-attr]
    rows = ["| opens in burst | " + " | ".join(f"lost at -b {limit}" for limit in limits) + " |",
            "|---:|" + "---:|" * len(limits)]
    for b in bursts:
        rows.append(f"| {b:,} | " + " | ".join(f"{lost.get((limit, b), '-'):,}" if (limit, b) in lost else "-"
                                                for limit in limits) + " |")
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
            f"-b {limit:,}: Slab +{growth / 2**20:.1f} MiB "
            f"(SUnreclaim +{int(m['sunreclaim_growth']) / 2**20:.1f}, "
            f"skbuff+kmalloc caches +{int(m['skb_kmalloc_growth']) / 2**20:.1f}) for ~{records:,} records "
            f"accepted (({opens:,} opens - {lost:,} lost) x {RECORDS_PER_OPEN}; "
            f"backlog {int(m['queued']):,} at the time) = "
            f"~{growth / records:,.0f} B per record; formula worst case {worst / 2**20:.1f} MiB "
            f"({WORST_CASE_BYTES:,} B per record); measured = {100 * growth / worst:.0f} % of it"
        )
    return out


LIMIT_ROLES = {"320": ("-b 320 (AL2 default)", "#d62728"), "tuned": ("-b {limit} (tuned)", "#1f77b4"),
               "4x": ("-b {limit} (4x tuned)", "#2ca02c")}
SUITE_STYLES = {"bookworm": ("-", "o", "solid"), "trixie": ("--", "s", "dashed")}


def _role(limit: int, tuned: int) -> str:
    return "320" if limit == 320 else "tuned" if limit == tuned else "4x"


def plot(results: Mapping[str, Dict[str, object]], path: Path):
    """Lost events against burst size, one line per limit and kernel (matplotlib, no pyplot state): colour
    says the limit (AL2's 320, tuned, 4x tuned), line style the kernel (suite). Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    fig = Figure(figsize=(9, 5.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    bursts: set = set()
    for suite, res in results.items():
        style, marker, _ = SUITE_STYLES[suite]
        curve, tuned = res["curve"], int(res["tuned"])  # type: ignore[arg-type]
        for limit in sorted({int(r["limit"]) for r in curve}):  # type: ignore[union-attr]
            runs = sorted((int(r["opens"]), int(r["lost"])) for r in curve if int(r["limit"]) == limit)  # type: ignore[union-attr]
            bursts.update(b for b, _ in runs)
            label, colour = LIMIT_ROLES[_role(limit, tuned)]
            # y: the kernel's lost counter as a share of the burst's openat calls (one refused event counts
            # once)
            ax.plot(
                [b for b, _ in runs],
                [100.0 * lost / b for b, lost in runs],
                color=colour,
                linestyle=style,
                marker=marker,
                linewidth=2,
                label=f"{label.format(limit=limit)}, kernel {res['kernel']}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(bursts))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.grid(True, color="#dddddd")
    ax.set_xlabel("openat calls in the burst (log scale)")
    ax.set_ylabel("events lost (kernel audit_lost / openat calls)")
    vms = "; ".join(sorted({str(res["vm"]) for res in results.values()}))
    ax.set_title(f"Audit events lost vs burst size (auditd stopped {PAUSE} s, backlog_wait_time 0)\n"
                 f"{vms}; {RECORDS_PER_OPEN} records per openat; "
                 + ", ".join(f"{SUITE_STYLES[suite][2]}: {images.SUITE_NAMES[suite]}" for suite in results),
                 loc="left", fontsize=10)
    # the empty corner: small bursts, between the 320 lines (top) and the larger limits (bottom)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(0.005, 0.5), framealpha=0.95)
    fig.savefig(path, metadata={"Software": None})
    return fig


def suite_results() -> Dict[str, Dict[str, object]]:
    """The last ``make storm`` result of every suite that has one (``.cache/e2e/storm-<suite>.json``)."""
    out = {}
    for suite in images.SUITES:
        f = result_path(suite)
        if f.exists():
            out[suite] = json.loads(f.read_text())
    return out


def result_path(suite: str) -> Path:
    return REPO / ".cache" / "e2e" / f"storm-{suite}.json"


def summary_line(res: Dict[str, object]) -> str:
    s = res["summary"]
    return (f"storm: lost default={s['lost_default']} tuned={s['lost_tuned']}; "  # type: ignore[index]
            f"stall default={s['stall_default_ms']}ms tuned={s['stall_tuned_ms']}ms")  # type: ignore[index]


#: The shell loop the guest times beside the sampler (guest/e2e-storm.sh); timed here on the host too, the two
#: give how much slower the emulated CPU is than the host's.
REFERENCE_LOOP = "i=0; while ((i < 50000)); do i=$((i + 1)); done"


def host_reference_cpu_s(repeats: int = 3) -> float:
    """CPU seconds (user + system) of ``REFERENCE_LOOP`` in a fresh bash on this host, best of ``repeats``."""
    import resource
    import subprocess

    best = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["bash", "-c", REFERENCE_LOOP], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return best


def sample_cpu(measured: Mapping[str, str], host_ref_s: float,
               interval_s: int = DEFAULT_INTERVAL_S) -> Dict[str, float]:
    """The sampler's CPU per sample from the guest's ``E2E-SAMPLE-CPU`` line: as measured under TCG, and
    scaled to the host's speed by the reference loop; the share of one core that is at ``interval_s``."""
    samples = int(measured["samples"])
    tcg_s = float(measured["cpu_s"]) / samples
    slowdown = float(measured["ref_cpu_s"]) / host_ref_s
    native_s = tcg_s / slowdown
    return {"tcg_ms": tcg_s * 1000, "slowdown": slowdown, "native_ms": native_s * 1000,
            "core_percent": 100 * native_s / interval_s, "tcg_core_percent": 100 * tcg_s / interval_s}


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.storm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", default=",".join(map(str, BURSTS)), help="burst sizes for the headroom curve")
    ap.add_argument("--suite", choices=images.SUITES, default=images.DEFAULT_SUITE,
                    help="which Debian (and kernel) to boot; default %(default)s")
    ap.add_argument("--no-plot", action="store_true", help=f"do not rewrite {PLOT.relative_to(REPO)}")
    ap.add_argument("--plot-only", action="store_true",
                    help="boot nothing: redraw the plot from every suite's last results")
    args = ap.parse_args(list(argv))
    if args.plot_only:
        results = suite_results()
        if not results:
            ap.error("no storm results yet: run make storm first")
        plot(results, PLOT)
        kernels = ", ".join(f"{suite}: {res['kernel']}" for suite, res in results.items())
        print(f"plot: {PLOT.relative_to(REPO)} ({kernels})")
        return 0
    bursts = [int(b) for b in args.bursts.split(",") if b]
    started = time.monotonic()
    s = scenarios.al2_layout(storm_spec=spec(bursts=bursts), suite=args.suite)
    run = s.runs[0]
    res = analyse(run)
    res["suite"] = args.suite
    res["total_seconds"] = time.monotonic() - started
    out = result_path(args.suite)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"VM: {res['vm']}, accel {res['accel']}, {images.SUITE_NAMES[args.suite]} ({args.suite}), kernel "
          f"{res['kernel']} (HZ={res['hz']}); block said: "
          f"{res['result_line']}")
    print(
        f"burst: {OPENS} openat calls while auditd is SIGSTOPped for {PAUSE} s; "
        f"wait {res['boot_wait']} ticks is the boot's backlog_wait_time\n"
    )
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
        results = suite_results()
        plot(results, PLOT)
        print(
            f"plot: {PLOT.relative_to(REPO)} "
            f"(kernels: {', '.join(str(r['kernel']) for r in results.values())})"
        )
    print(
        f"run: {run.elapsed_s:.0f} s in the VM, {res['total_seconds']:.0f} s in all; "
        f"raw results {out.relative_to(REPO)}"
    )
    if run.sample_cpu:
        c = sample_cpu(run.sample_cpu, host_reference_cpu_s())
        print(f"sampler: {c['tcg_ms']:.0f} ms of CPU per sample under TCG ({c['tcg_core_percent']:.3f} % of "
              f"a core at {DEFAULT_INTERVAL_S} s); the emulated CPU is {c['slowdown']:.0f}x slower than this "
              f"host's, so {c['native_ms']:.1f} ms = {c['core_percent']:.4f} % of a core on real hardware")
    print(summary_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
