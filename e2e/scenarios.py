"""The e2e scenarios: each boots the image (or a variant) with user data taken from a synthesized template
and returns the parsed runs. Assertions live in ``tests/test_e2e_scenarios.py``; ``python -m e2e.scenarios``
runs them all and prints a summary (``--suite trixie`` for Debian 13; default bookworm).

Every scenario takes ``suite`` (one of ``images.SUITES``): the same user data on Debian 12 (kernel 6.1,
audit 3.0.9, cloud-init 22.4) or Debian 13 (kernel 6.12, audit 4.0.2, cloud-init 25.1). Serial logs go to
``<E2E_WORKDIR>/<suite>/<scenario>/``.

VM memory follows the instance type whose user data is booted: t3.micro = 1 GiB, m5.large = 8 GiB (TCG
allocates guest memory lazily; an idle 8 GiB guest uses far less). One vCPU, two for a storm
(``vm.DEFAULT_SMP``): the limit follows memory only.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import image as images
from . import userdata, vm

REPO = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("E2E_WORKDIR", REPO / ".cache" / "e2e" / "runs"))
RESULT_LINE = re.compile(r"^cdk-audit-backlog: backlog_limit (\S+) -> (\S+) \((.*)\)$")
T3_MICRO_MIB, M5_LARGE_MIB = 1024, 8192


@functools.lru_cache(maxsize=None)
def example_user_data() -> Dict[str, bytes]:
    """The example app's launches (``app.py``): Web (t3.micro Instance), WorkerTemplate (m5.large)."""
    return userdata.synthesized_user_data(REPO / "app.py")


@functools.lru_cache(maxsize=None)
def fixture_templates() -> Dict[str, dict]:
    """``e2e/fixture_app.py`` synthesized: stack name -> template (synthesized once per process)."""
    with tempfile.TemporaryDirectory(prefix="e2e-synth-") as tmp:
        return userdata.synthesize(REPO / "e2e" / "fixture_app.py", Path(tmp))


@functools.lru_cache(maxsize=None)
def fixture_user_data() -> Dict[str, bytes]:
    """``e2e/fixture_app.py``: Strict (t3.micro, kernel_cmdline=True, user script with set -e / exit 0) and
    MixedTemplate (a group of m5.large and r5.4xlarge: auto; a user script long enough that the block is
    compact)."""
    return {
        f"{stack}/{logical_id}": data
        for stack, template in fixture_templates().items()
        for logical_id, data in userdata.user_data_by_resource(template).items()
    }


def fixture_metadata(prefix: str) -> dict:
    """The ``cdk-audit-backlog`` Metadata of the one fixture app resource whose logical id starts with
    ``prefix``."""
    hits = [
        (r.get("Metadata") or {}).get("cdk-audit-backlog")
        for template in fixture_templates().values()
        for logical_id, r in template.get("Resources", {}).items()
        if logical_id.startswith(prefix)
    ]
    if len(hits) != 1 or not isinstance(hits[0], dict):
        raise KeyError(f"{len(hits)} fixture resources with Metadata match {prefix!r}")
    return hits[0]


def workdir(name: str) -> Path:
    d = WORK / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def result_line(report: Dict[str, str]) -> Optional[Tuple[str, str, str]]:
    for line in vm.outputs(report):
        m = RESULT_LINE.match(line)
        if m:
            return m.group(1), m.group(2), m.group(3)
    return None


def merged_b(rules_text: str) -> Optional[int]:
    """The last ``-b N`` of a rules file (what auditctl -R leaves in effect)."""
    last = None
    for line in rules_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "-b":
            last = int(parts[1])
    return last


def _version_key(name: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def rules_d_b(files: Dict[str, Dict[str, object]]) -> Optional[int]:
    """The ``-b`` that augenrules will load at the next boot: rules.d/*.rules in ``ls -1v`` order, last
    wins."""
    names = sorted((p for p in files if p.startswith("/etc/audit/rules.d/") and p.endswith(".rules")),
                   key=lambda p: _version_key(p.rsplit("/", 1)[1]))
    return merged_b("".join(str(files[p].get("content", "")) + "\n" for p in names))


@dataclass
class Scenario:
    name: str
    runs: List[vm.Run]
    user_data: bytes
    seconds: float
    suite: str = images.DEFAULT_SUITE

    @property
    def target(self) -> str:
        return userdata.block_target(self.user_data)


def debian_chain(suite: str = images.DEFAULT_SUITE) -> Scenario:
    """Scenarios 1, 3, 5 and 6 on one disk of Debian as shipped (rules.d ``-b 8192``, and a cloud image's
    GRUB drop-in that sets ``GRUB_CMDLINE_LINUX`` again after ``/etc/default/grub``), 1 GiB.

    Boot 1 runs the fixture app's Strict Instance user data: t3.micro (policy 1024, below the shipped 8192),
    ``kernel_cmdline=True``, and a user script with ``set -e`` that ends in ``exit 0``. Boot 2 is a new
    instance on the same disk (new instance-id: cloud-init runs the same user data again) started as the
    bootloader would start it, with the arguments of the first menuentry of the grub.cfg that boot 1
    regenerated (the image has grub's configuration but boots with ``-kernel``). One chain carries what
    took two before: the larger shipped limit kept, the rerun that changes nothing, the boot unit before the
    rules load, the command line in effect after the reboot."""
    started = time.monotonic()
    ud = userdata.find(fixture_user_data(), "Strict")
    img = images.build_image(images.DEBIAN, suite)
    wd = workdir(f"{suite}/debian")
    first = vm.boot(img, name="debian-1", workdir=wd, user_data=ud, instance_id="i-e2e-debian-1",
                    memory_mib=T3_MICRO_MIB)
    runs = [first]
    line = first.boot(1).get("grub_linux_line", "")
    if line:  # else the test that reads grub.cfg fails with the reason
        runs.append(vm.boot(img, name="debian-2-rerun", workdir=wd, user_data=ud,
                            instance_id="i-e2e-debian-2", overlay=wd / "debian-1.qcow2",
                            memory_mib=T3_MICRO_MIB, append=without_initramfs(grub_args(line))))
    return Scenario("debian", runs, ud, time.monotonic() - started, suite)


def al2_layout(storm_spec: str = "", suite: str = images.DEFAULT_SUITE) -> Scenario:
    """Scenario 2: the m5.large launch template's user data on an AL2-like layout (-b 320,
    RefuseManualStop=yes), in an 8 GiB guest; optionally followed by a storm (see ``guest/e2e-storm.sh``)."""
    started = time.monotonic()
    ud = userdata.find(example_user_data(), "WorkerTemplate")
    img = images.build_image(images.AL2, suite)
    wd = workdir(f"{suite}/al2" + ("-storm" if storm_spec else ""))
    extra = f"e2e.storm={storm_spec}" if storm_spec else ""
    run = vm.boot(img, name="al2", workdir=wd, user_data=ud, instance_id="i-e2e-al2-1",
                  memory_mib=M5_LARGE_MIB, extra_append=extra, timeout_s=1800 if storm_spec else 600,
                  smp=2 if storm_spec else vm.DEFAULT_SMP)
    return Scenario("al2", [run], ud, time.monotonic() - started, suite)


def immutable_then_reboot(suite: str = images.DEFAULT_SUITE) -> Scenario:
    """Scenario 4: AL2-like layout plus ``-e 2``: boot 1 cannot change the kernel; boot 2 (a reboot inside the
    same qemu run, user data not re-run) must come up with the persisted limit."""
    started = time.monotonic()
    ud = userdata.find(example_user_data(), "Web")
    img = images.build_image(images.IMMUTABLE, suite)
    wd = workdir(f"{suite}/immutable")
    run = vm.boot(img, name="immutable", workdir=wd, user_data=ud, instance_id="i-e2e-immutable-1",
                  memory_mib=T3_MICRO_MIB, extra_append="e2e.boots=2", timeout_s=900)
    return Scenario("immutable", [run], ud, time.monotonic() - started, suite)


def grub_args(linux_line: str) -> str:
    """Kernel arguments of a grub.cfg ``linux /boot/vmlinuz-X args...`` line (what grub would pass)."""
    parts = linux_line.split()
    if len(parts) < 2 or parts[0] != "linux":
        raise ValueError(f"not a grub linux line: {linux_line!r}")
    return " ".join(parts[2:])


def without_initramfs(args: str) -> str:
    """Kernel arguments as the harness passes them: grub.cfg names the root by ``root=UUID=`` (of the disk
    update-grub ran on, the harness's root disk), which only an initramfs resolves; the harness boots without
    one (``vm.ROOT_DEVICE``), so it names the device. Every other argument is passed as grub would."""
    return " ".join(f"root={vm.ROOT_DEVICE}" if a.startswith("root=") else a for a in args.split())


def resize_after(al2: Scenario) -> Scenario:
    """The user-data route on a resize: the disk the AL2-like scenario booted with the m5.large user data at
    8 GiB (the block installed the boot unit), started again with 1 GiB, then with 8 GiB, with the same
    instance-id (cloud-init does not run the user data again: only the boot unit sizes the limit, from
    MemTotal, before the rules load). Two boots; with ``al2``'s they make the 8 -> 1 -> 8 GiB sequence."""
    started = time.monotonic()
    overlay = al2.runs[0].log.parent / "al2.qcow2"
    img = images.build_image(images.AL2, al2.suite)
    wd = workdir(f"{al2.suite}/resize")
    runs = []
    for name, memory in (("resize-1gib", T3_MICRO_MIB), ("resize-8gib", M5_LARGE_MIB)):
        runs.append(vm.boot(img, name=name, workdir=wd, user_data=al2.user_data, instance_id="i-e2e-al2-1",
                            overlay=overlay, memory_mib=memory, extra_append=vm.NO_CLOUD_INIT))
    return Scenario("resize", runs, al2.user_data, time.monotonic() - started, al2.suite)


def early_limit(report: Dict[str, str]) -> Optional[str]:
    """The kernel's backlog_limit right after the boot's rule load (e2e-early.service), None if not read."""
    return report.get("early.backlog_limit")


def unit_outputs(report: Dict[str, str]) -> List[str]:
    """What the boot unit (cdk-audit-backlog.service) printed during this boot."""
    return [report[f"unit_output.{i}"] for i in range(1, int(report.get("unit_output_lines", "0")) + 1)]


def mixed_group_per_machine(suite: str = images.DEFAULT_SUITE) -> Scenario:
    """Scenario 7: the launch template of a mixed group (m5.large and r5.4xlarge, different limits, so the
    block runs in auto) booted on the AL2-like layout (-b 320, below every limit the policy gives, so the
    distribution's limit cannot mask the result) in a 1 GiB and in an 8 GiB guest: each machine sizes
    itself from its own MemTotal. ``make test`` runs it on the default suite only (two boots: the
    formula and the script are the same on both suites, the other scenarios cover the suites)."""
    started = time.monotonic()
    ud = userdata.find(fixture_user_data(), "MixedTemplate")
    img = images.build_image(images.AL2, suite)
    wd = workdir(f"{suite}/mixed")
    runs = [
        vm.boot(img, name=f"mixed-{mib}", workdir=wd, user_data=ud, instance_id=f"i-e2e-mixed-{mib}",
                memory_mib=mib)
        for mib in (T3_MICRO_MIB, M5_LARGE_MIB)
    ]
    return Scenario("mixed", runs, ud, time.monotonic() - started, suite)


def summary(s: Scenario) -> Dict[str, object]:
    out: Dict[str, object] = {"scenario": s.name, "suite": s.suite, "target": s.target,
                              "seconds": round(s.seconds, 1), "boots": []}
    for run in s.runs:
        for n, rep in sorted(run.boots.items()):
            out["boots"].append({  # type: ignore[union-attr]
                "run": run.name, "boot": n, "accel": run.accel, "run_seconds": round(run.elapsed_s, 1),
                "limit": vm.audit_status(rep).get("backlog_limit"), "early_limit": early_limit(rep),
                "enabled": vm.audit_status(rep).get("enabled"),
                "result": result_line(rep), "cmdline": rep.get("cmdline"), "kernel": rep.get("kernel"),
            })
    return out


ALL = {
    "debian": debian_chain,
    "al2": al2_layout,
    "immutable": immutable_then_reboot,
    # on its own, the AL2-like boot first (without its storm), then the two resize boots
    "resize": lambda suite=images.DEFAULT_SUITE: resize_after(al2_layout(suite=suite)),
    "mixed": mixed_group_per_machine,
}

if __name__ == "__main__":  # python -m e2e.scenarios [--suite SUITE] [scenario ...]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m e2e.scenarios")
    ap.add_argument("--suite", choices=images.SUITES, default=images.DEFAULT_SUITE)
    ap.add_argument("names", nargs="*", metavar="scenario", help=f"any of {', '.join(ALL)} (default: all)")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(ALL))
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}")
    for name in args.names or list(ALL):
        print(json.dumps(summary(ALL[name](suite=args.suite)), indent=1), flush=True)
