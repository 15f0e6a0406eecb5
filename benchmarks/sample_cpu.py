"""CPU of one sample of the on-machine sampler (live health), against its goal: under 0.01 % of one core at
the default interval (60 s), i.e. under 6 ms per sample. Two measurements, in one run:

1. On this host, natively: the sampler as the block installs it (the rendered block with the monitor part,
   run as ``bash FILE sample``) 200 times on a fixture root with a stand-in ``auditctl`` (a shell script
   printing a status: this host has no audit subsystem to ask), minus nothing: the stand-in's own cost is
   printed beside it, a real ``auditctl -s`` (one netlink exchange) costs about the same or less.
2. On a real kernel: the storm boot of ``make test`` or ``make storm`` (``e2e/guest/e2e-storm.sh``) runs the
   sampler 5 times with the real auditctl and prints the CPU it took, and the CPU of a fixed shell loop. That
   boot runs under TCG software emulation; the same loop timed here gives a slowdown to scale by. The scale
   understates TCG's cost for starting programs (page tables, exec), which is most of a sample, so this
   figure is an upper bound. Reads the last storm boot of each suite under ``.cache/e2e/runs``.
"""

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "constructs")]

from cdk_audit_backlog.monitoring_metrics import DEFAULT_INTERVAL_S  # noqa: E402
from cdk_audit_backlog.user_data import BlockInputs, render_block  # noqa: E402
from e2e import storm  # noqa: E402
from e2e.scenarios import WORK  # noqa: E402
from e2e.vm import _KV  # noqa: E402

GOAL_PERCENT = 0.01
RUNS = 200
STATUS = "enabled 1\nfailure 1\npid 228\nrate_limit 0\nbacklog_limit 8192\nlost 0\nbacklog 0\n" \
         "backlog_wait_time 15000\nbacklog_wait_time_actual 0\n"


def _cpu(cmd, env=None) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def native() -> None:
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB", boot_unit="auto",
                                     monitor_interval=DEFAULT_INTERVAL_S))
    start = block.index("<<'CDK_AUDIT_BACKLOG'")
    body = block[block.index("\n", start) + 1:block.rindex("CDK_AUDIT_BACKLOG")]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "bin").mkdir()
        fake = t / "bin" / "auditctl"
        fake.write_text("#!/bin/sh\nprintf '%s' '" + STATUS + "'\n")
        fake.chmod(0o755)
        root = t / "root"
        (root / "proc/228").mkdir(parents=True)
        (root / "proc/228/comm").write_text("auditd\n")
        script = t / "cdk-audit-backlog"
        script.write_text(body)
        env = {**os.environ, "PATH": f"{t / 'bin'}:{os.environ['PATH']}", "CAB_ROOT": str(root),
               "CAB_STATSD": "127.0.0.1:9"}
        loop = f"for i in $(seq {RUNS}); do bash {script} sample; done"
        sample = min(_cpu(["bash", "-c", loop], env) for _ in range(3)) / RUNS
        fake_loop = f"for i in $(seq {RUNS}); do {fake}; done"
        stand_in = min(_cpu(["bash", "-c", fake_loop]) for _ in range(3)) / RUNS
    share = 100 * sample / DEFAULT_INTERVAL_S
    print(f"native, this host: {sample * 1000:.1f} ms of CPU per sample (the stand-in auditctl "
          f"{stand_in * 1000:.1f} ms of it) = {share:.4f} % of a core at {DEFAULT_INTERVAL_S} s; "
          f"goal {GOAL_PERCENT} %: {share / GOAL_PERCENT:.2f}x of it")


def real_kernel() -> None:
    found = {}
    for log in sorted(WORK.glob("*/al2-storm/al2.serial.log")):
        for line in log.read_text(errors="replace").splitlines():
            i = line.find("E2E-SAMPLE-CPU ")
            if i >= 0:
                found[log.parent.parent.name] = dict(_KV.findall(line[i + len("E2E-SAMPLE-CPU "):]))
    if not found:
        print(f"real kernel: no storm boot with the sampler under {WORK} (make storm or make test makes one)")
        return
    host = storm.host_reference_cpu_s()
    for suite, measured in sorted(found.items()):
        c = storm.sample_cpu(measured, host)
        print(f"real kernel, {suite} under TCG: {c['tcg_ms']:.0f} ms per sample; the reference loop "
              f"{c['slowdown']:.0f}x slower than here -> at most {c['native_ms']:.1f} ms per sample = "
              f"{c['core_percent']:.4f} % of a core at {DEFAULT_INTERVAL_S} s")


if __name__ == "__main__":
    native()
    real_kernel()
