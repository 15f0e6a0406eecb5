"""The storm report (e2e/storm.py) on a parsed serial log: the analysis, the summary line and the plot.
The storm itself runs on a real kernel in tests/test_e2e_scenarios.py (small) and in `make storm` (full)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

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
    assert res["summary"] == {"lost_default": 2995, "lost_tuned": 0, "stall_default_ms": 6300, "stall_tuned_ms": 900}
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


def test_plot_is_valid_svg_with_one_line_per_limit(tmp_path):
    path = tmp_path / "curve.svg"
    storm.svg(storm.analyse(_run()), path)
    root = ET.parse(path).getroot()
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 3
    assert all(len(pl.get("points").split()) == 2 for pl in lines)
    # 320 lost 100 of 500 and 900 of 1000 -> 20 % and 90 % of the 100 % axis (y grows downwards)
    red = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    top, bottom = 50, 420 - 60
    assert [round((bottom - yy) / (bottom - top) * 100) for _, yy in red] == [20, 90]
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "-b 320 (AL2 default)" in texts and "-b 8192 (tuned)" in texts and "-b 32768 (4x tuned)" in texts
