"""Synth overhead of AuditBacklog: the same apps synthesized with and without the aspect in one run.

Prints, per app, the best-of-N wall time of a whole synthesizing process (fresh interpreter and jsii runtime
each time, runs interleaved so machine load hits both sides alike), their ratio (goal <= 1.05), and the
rendered block's size in bytes (goal <= 3 KB).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "constructs"))

from cdk_audit_backlog.user_data import BlockInputs, render_block  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
APPS = [("simple", 300), ("mixed", 500)]


def run(kind, count, mode):
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, CDK_VALIDATION="false", JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20")
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(HERE, "bench_app.py"), kind, str(count), mode, out],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if mode == "tuned":
            tuned = 0
            for name in os.listdir(out):
                if name.endswith(".template.json"):
                    with open(os.path.join(out, name)) as f:
                        tuned += json.dumps(json.load(f)).count("# >>> cdk-audit-backlog >>>")
            return elapsed, tuned
        return elapsed, 0


def main():
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB"))
    print(f"block size: {len(block.encode())} bytes (goal <= 3072)")
    for kind, count in APPS:
        plain, noop, tuned, blocks = [], [], [], 0
        for _ in range(REPEATS):
            plain.append(run(kind, count, "plain")[0])
            noop.append(run(kind, count, "noop")[0])
            t, blocks = run(kind, count, "tuned")
            tuned.append(t)
        ratio = min(tuned) / min(plain)
        print(f"{kind} app, {count} launches: plain {min(plain):.2f}s, tuned {min(tuned):.2f}s "
              f"(best of {REPEATS}), ratio {ratio:.3f} (goal <= 1.05); blocks in templates: {blocks}")
        print(f"  floor: a no-op Python aspect alone takes {min(noop):.2f}s, ratio {min(noop) / min(plain):.3f} "
              f"(one jsii callback per construct)")


if __name__ == "__main__":
    main()
