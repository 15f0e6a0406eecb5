"""CPU of one sample of the on-machine sampler (live health), against its goal: under 0.01 % of one core at
the default interval (60 s), i.e. under 6 ms per sample.

Measured on a real kernel: the storm boot of ``make test`` or ``make storm`` (``e2e/guest/e2e-storm.sh``)
runs the sampler 5 times and prints the CPU it took (user + system, the sampler and what it runs), and the
CPU of a fixed shell loop. That boot runs under TCG software emulation, so the same loop is timed here on the
host, in this run: the ratio of the two scales the guest's figure to the host's speed. Reads the last storm
boot of each suite under ``.cache/e2e/runs`` (``E2E_WORKDIR``); with none, says how to get one.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "constructs")]

from e2e import storm  # noqa: E402
from e2e.scenarios import WORK  # noqa: E402
from e2e.vm import _KV  # noqa: E402

GOAL_PERCENT = 0.01


def main() -> int:
    logs = sorted(WORK.glob("*/al2-storm/al2.serial.log"))
    found = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            i = line.find("E2E-SAMPLE-CPU ")
            if i >= 0:
                found[log.parent.parent.name] = dict(_KV.findall(line[i + len("E2E-SAMPLE-CPU "):]))
    if not found:
        print(f"no storm boot with the sampler under {WORK}: run make storm (or make test) first")
        return 1
    host = storm.host_reference_cpu_s()
    print(f"host reference loop: {host * 1000:.1f} ms of CPU (best of 3)")
    for suite, measured in sorted(found.items()):
        c = storm.sample_cpu(measured, host)
        print(f"{suite}: {c['tcg_ms']:.0f} ms per sample under TCG; TCG {c['slowdown']:.0f}x slower than "
              f"the host -> {c['native_ms']:.2f} ms per sample = {c['core_percent']:.4f} % of a core at "
              f"{storm.DEFAULT_INTERVAL_S} s; goal {GOAL_PERCENT} %: "
              f"{c['core_percent'] / GOAL_PERCENT:.2f}x of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
