"""Synth overhead of AuditBacklog, beside cdk-nag, on the same apps in one run.

Each sample is a whole synthesizing process (fresh interpreter and jsii runtime), `CDK_VALIDATION=false` for
every mode. Repetitions are interleaved (plain, tuned, aspect, noop, nag, [before], plain, tuned, ...) so
machine load hits every mode alike; the best of each is reported, with its ratio to plain. Modes:

- plain: the app without the library.
- tuned: ``AuditBacklog.apply_to(app)`` (the documented way in).
- aspect: ``Aspects.of(app).add(AuditBacklog())`` (the plain aspect form: one Python callback per construct).
- noop: a Python aspect that does nothing (the floor of any per-construct Python aspect).
- nag: cdk-nag 3.x ``AwsSolutionsChecks`` as a validation plugin (the peer a Python CDK user already runs).
- before (only with ``BENCH_BEFORE=<git rev>``): ``apply_to`` with the library as it was at that revision.

Blocks are counted in the synthesized templates of the modes that tune, so a mode cannot look fast by tuning
nothing. ``BENCH_REPEATS`` (default 2) sets the repetitions; ``BENCH_APPS`` (e.g. ``mixed:500``) the apps.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "constructs"))

from cdk_audit_backlog.user_data import BlockInputs, render_block  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
APPS = [
    (k, int(n))
    for k, n in (a.split(":") for a in os.environ.get("BENCH_APPS", "simple:300,mixed:500").split(","))
]
BEFORE = os.environ.get("BENCH_BEFORE")
MODES = ["plain", "tuned", "aspect", "noop", "nag"] + (["before"] if BEFORE else [])
MARKER = "# >>> cdk-audit-backlog >>>"


def run(kind, count, mode, before_path=None):
    """(wall time of the whole process, blocks in its templates, jsii kernel requests it sent)."""
    with tempfile.TemporaryDirectory() as out:
        messages_file = os.path.join(out, "bridge-messages")
        env = dict(os.environ, CDK_VALIDATION="false", JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
                   BENCH_MESSAGES_FILE=messages_file)
        if mode == "before":
            env["PYTHONPATH"] = before_path  # ahead of the editable install of this checkout
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(HERE, "bench_app.py"), kind, str(count),
                        "tuned" if mode == "before" else mode, out],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        blocks = 0
        for name in os.listdir(out):
            if name.endswith(".template.json"):
                with open(os.path.join(out, name)) as f:
                    blocks += json.dumps(json.load(f)).count(MARKER)
        with open(messages_file) as f:
            messages = int(f.read())
        return elapsed, blocks, messages


def export_before(tmp):
    """The library's package as it was at BENCH_BEFORE, for the 'before' mode."""
    # The package reads the boot script through its userdata symlink: export both.
    archive = subprocess.run(["git", "-C", REPO, "archive", BEFORE, "constructs", "userdata"], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
    return os.path.join(tmp, "constructs")


def main():
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB"))
    print(f"block size: {len(block.encode())} bytes (goal <= 3072)")
    print(f"{REPEATS} interleaved repetitions per mode, best of each; CDK_VALIDATION=false everywhere")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        before_path = export_before(tmp) if BEFORE else None
        for kind, count in APPS:
            times = {m: [] for m in MODES}
            blocks, messages = {}, {}
            for _ in range(REPEATS):
                for mode in MODES:
                    t, blocks[mode], messages[mode] = run(kind, count, mode, before_path)
                    times[mode].append(t)
            best = {m: min(ts) for m, ts in times.items()}
            print(f"\n{kind} app, {count} launches:")
            print(
                f"  {'mode':<15} {'best s':>7} {'ratio':>7} {'blocks':>7} {'bridge msgs':>12} "
                f"{'per launch':>11}  all runs (s)"
            )
            for mode in MODES:
                label = f"before ({BEFORE})"[:15] if mode == "before" else mode
                shown = blocks[mode] if mode in ("tuned", "aspect", "before") else "-"
                extra = (messages[mode] - messages["plain"]) / count
                runs = " ".join(f"{t:.2f}" for t in times[mode])
                print(f"  {label:<15} {best[mode]:7.2f} {best[mode] / best['plain']:7.3f} {shown!s:>7} "
                      f"{messages[mode]:>12} {extra:>+11.1f}  {runs}")
            per_launch = (best["tuned"] - best["plain"]) / count * 1000
            print(
                f"  tuned costs {per_launch:.2f} ms per launch over plain (goal <= 3); ratio goal <= 1.25 "
                f"(want <= 1.10); cdk-nag {best['nag'] / best['plain']:.3f}. 'per launch' = bridge messages "
                f"(jsii kernel round trips) over plain, per launch"
            )
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
