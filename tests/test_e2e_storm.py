"""The storm report (e2e/storm.py) on a parsed serial log: the analysis, the summary line and the plot.
The storm itself runs on a real kernel in tests/test_e2e_scenarios.py (small) and in `make storm` (full)."""

from __future__ import annotations

import json

from e2e import storm, vm

SERIAL = """\
E2E-RESULT boot=1 phase=start
[  40.100] [   40.000000] cloud-init[378]: cdk-audit-backlog: target 8192 (m5.large/8192MiB)
[  41.100] [   41.000000] cloud-init[378]: cdk-audit-backlog: backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)
E2E-RESULT boot=1 kernel=6.1.0-56-cloud-amd64
E2E-RESULT boot=1 output_lines=1
E2E-RESULT boot=1 output.1=cdk-audit-backlog: backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)
E2E-RESULT boot=1 block_first_s=40.5
E2E-RESULT boot=1 block_last_s=41.0
E2E-RESULT boot=1 cloud_final_done_s=50000e-3
E2E-RESULT boot=1 scripts_user_s=1.250
E2E-STORM-BEGIN boot_limit=8192 boot_wait=15000 hz=100
[ 61.0] audit: audit_backlog=321 > audit_backlog_limit=320 E2E-STORM limit=320 wait=0 opens=1000 pause_s=5 lost=2988 wait_actual=0 drained=yes burst_ms=410
E2E-STORM limit=8192 wait=0 opens=1000 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=380
E2E-STORM limit=320 wait=15000 opens=1000 pause_s=5 lost=7 wait_actual=5100 drained=yes burst_ms=6300
E2E-STORM limit=8192 wait=15000 opens=1000 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=900
E2E-STORM limit=320 wait=0 opens=500 pause_s=5 lost=100 wait_actual=0 drained=yes burst_ms=50
E2E-STORM limit=320 wait=0 opens=1000 pause_s=5 lost=900 wait_actual=0 drained=yes burst_ms=90
E2E-STORM limit=8192 wait=0 opens=500 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=50
E2E-STORM limit=8192 wait=0 opens=1000 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=95
E2E-STORM limit=32768 wait=0 opens=500 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=50
E2E-STORM limit=32768 wait=0 opens=1000 pause_s=5 lost=0 wait_actual=0 drained=yes burst_ms=99
E2E-STORM-KERNEL [   70.123456] audit: audit_backlog=321 > audit_backlog_limit=320
E2E-MEM limit=8192 opens=8000 lost=30000 queued=8192 slab_growth=12000000 sunreclaim_growth=11000000 skb_kmalloc_growth=10000000 burst_ms=700
"""


def _run() -> vm.Run:
    run = vm.Run(name="fake", log=None, elapsed_s=300.0, accel="tcg", append="",  # type: ignore[arg-type]
                 lines=[(float(i), line) for i, line in enumerate(SERIAL.splitlines())])
    vm._parse(run)
    return run


def test_spec_covers_both_limits_both_waits_and_the_curve():
    runs = storm.spec(bursts=(500, 1000)).split(",")
    assert runs[:4] == ["320:0:1000:5", "boot:0:1000:5", "320:boot:1000:5", "boot:boot:1000:5"]
    assert {r.split(":")[0] for r in runs[4:-2]} == {"320", "boot", "boot4"}
    assert runs[-2:] == ["mem:boot:8000", "mem:boot4:30000"]


def test_analysis_separates_table_from_curve_and_sums_losses():
    res = storm.analyse(_run())
    assert res["tuned"] == 8192 and res["boot_wait"] == 15000
    assert [(r["limit"], r["wait"]) for r in res["table"]] == [
        ("320", "0"), ("8192", "0"), ("320", "15000"), ("8192", "15000")]
    assert len(res["curve"]) == 6
    assert res["summary"] == {
        "lost_default": 2995,
        "lost_tuned": 0,
        "stall_default_ms": 6300,
        "stall_tuned_ms": 900,
    }
    assert storm.summary_line(res) == "storm: lost default=2995 tuned=0; stall default=6300ms tuned=900ms"
    assert res["boot"]["apply_share"] == 1.25 / 50.0
    assert (res["boot"]["serial_block_first_s"], res["boot"]["serial_block_last_s"]) == (40.0, 41.0)
    assert res["kernel_lines"] == ["[   70.123456] audit: audit_backlog=321 > audit_backlog_limit=320"]


def test_memory_line_compares_with_the_formula_worst_case():
    (line,) = storm.memory_lines(storm.analyse(_run()))
    # 8,000 opens - 30,000 lost is nonsense on purpose: the record count is floored at 1 event
    assert "~5 records accepted" in line
    m = storm.memory_lines({"memory": [{"limit": "8192", "opens": "8000", "lost": "6330", "queued": "3820",
                                        "slab_growth": "17432576", "sunreclaim_growth": "0",
                                        "skb_kmalloc_growth": "0"}]})[0]
    assert "~8,350 records accepted" in m  # (8000 - 6330) x 5
    assert "~2,088 B per record" in m  # 17,432,576 / 8,350
    assert "worst case 70.1 MiB" in m and "= 24 % of it" in m  # 8192 x 8970 B


def _trixie(res):
    """The same storm as seen on Debian 13's kernel (a second suite for the plot), with other losses."""
    other = json.loads(json.dumps(res))
    other["kernel"] = "6.12.118+deb13-cloud-amd64"
    for r in other["curve"]:
        r["lost"] = str(int(r["lost"]) // 2)
    return other


def test_plot_draws_one_line_per_limit_and_kernel(tmp_path):
    path = tmp_path / "curve.png"
    bookworm = storm.analyse(_run())
    fig = storm.plot({"bookworm": bookworm, "trixie": _trixie(bookworm)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines) == 6  # 3 limits x 2 kernels
    red = lines["-b 320 (AL2 default), kernel 6.1.0-56-cloud-amd64"]
    # 320 lost 100 of 500 and 900 of 1000 -> 20 % and 90 % of the burst's calls
    assert list(red.get_xdata()) == [500, 1000] and list(red.get_ydata()) == [20.0, 90.0]
    assert list(lines["-b 320 (AL2 default), kernel 6.12.118+deb13-cloud-amd64"].get_ydata()) == [10.0, 45.0]
    assert {
        "-b 8192 (tuned), kernel 6.1.0-56-cloud-amd64",
        "-b 32768 (4x tuned), kernel 6.1.0-56-cloud-amd64",
    } < set(lines)
    # the limit is the colour, the kernel the line style
    styles = {label.rsplit("kernel ", 1)[1]: line.get_linestyle() for label, line in lines.items()}
    assert styles == {"6.1.0-56-cloud-amd64": "-", "6.12.118+deb13-cloud-amd64": "--"}
    assert red.get_color() == lines["-b 320 (AL2 default), kernel 6.12.118+deb13-cloud-amd64"].get_color()
    assert red.get_color() != lines["-b 8192 (tuned), kernel 6.1.0-56-cloud-amd64"].get_color()
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 100.0)


def test_table_rows_name_their_kernel():
    rows = storm.table(storm.analyse(_run())).splitlines()
    assert rows[0].startswith("| kernel | limit |")
    assert all(row.startswith("| 6.1.0-56-cloud-amd64 | ") for row in rows[2:]) and len(rows) == 6


def test_plot_only_redraws_from_every_suites_last_results(tmp_path, monkeypatch):
    monkeypatch.setattr(storm, "PLOT", tmp_path / "docs" / "p.png")
    monkeypatch.setattr(storm, "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    assert storm.suite_results() == {}
    res = storm.analyse(_run())
    storm.result_path("trixie").parent.mkdir(parents=True)
    storm.result_path("trixie").write_text(json.dumps(_trixie(res)))
    assert list(storm.suite_results()) == ["trixie"]
    assert storm.main(["--plot-only"]) == 0
    assert (tmp_path / "docs" / "p.png").exists()


def test_the_guest_times_the_same_reference_loop_as_the_host():
    """benchmarks/sample_cpu.py scales the guest's CPU per sample by this loop's time in both: the two must be
    the very same loop."""
    from pathlib import Path

    guest = (Path(storm.__file__).parent / "guest" / "e2e-storm.sh").read_text()
    assert f"cpu bash -c '{storm.REFERENCE_LOOP}'" in guest
