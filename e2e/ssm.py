"""The fleet path on the real kernel: the SSM document's commands on a machine that already runs.

One qemu run per suite: the AL2-like image (rules.d ``-b 320``) boots with user data that does NOT tune (so
320
is in force, as on a fleet deployed before the library), and that only drops two files: the commands of the
``AWS::SSM::Document`` that ``app.py`` synthesizes (``mainSteps[0].inputs.runCommand``, taken from the
template, joined by newlines as the SSM agent writes them) and ``ssm-sequence.sh``, started as a transient
unit after the reporter. The sequence runs the commands with ``sh -c FILE`` as root (how the agent runs an
``aws:runShellScript`` step) again and again: first run, second run, after a drift, read-only rules
directory, auditctl missing, immutable; each prints an ``E2E-SSM`` line parsed here. Assertions live in
``tests/test_e2e_ssm.py``; ``python -m e2e.ssm [SUITE...]`` prints the figures.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from . import image as images
from . import userdata, vm
from .scenarios import REPO, workdir

SEQUENCE = Path(__file__).resolve().parent / "ssm-sequence.sh"
MEMORY_MIB = 4096
_STEP = re.compile(r"E2E-SSM step=(\S+) (.*?)\r?$")
_OUT = re.compile(r"E2E-SSM-OUT step=(\S+) (.*?)\r?$")
_KV = re.compile(r"(\w+)=(\S*)")


def document_commands(app: Path = REPO / "app.py") -> List[str]:
    """``runCommand`` of the one ``AWS::SSM::Document`` in the app's synthesized templates (read from the
    template, not from the library)."""
    with tempfile.TemporaryDirectory(prefix="e2e-ssm-synth-") as tmp:
        templates = userdata.synthesize(app, Path(tmp))
    docs = [
        r
        for t in templates.values()
        for r in t.get("Resources", {}).values()
        if r.get("Type") == "AWS::SSM::Document"
    ]
    if len(docs) != 1:
        raise RuntimeError(f"{app.name}: expected one AWS::SSM::Document, found {len(docs)}")
    (step,) = docs[0]["Properties"]["Content"]["mainSteps"]
    if step["action"] != "aws:runShellScript":
        raise RuntimeError(f"unexpected step action {step['action']!r}")
    return step["inputs"]["runCommand"]


def guest_user_data(commands: List[str]) -> bytes:
    """User data that does not tune: it writes the document's commands and the sequence, and queues the
    sequence after the reporter (e2e-guest.service)."""
    script = ("\n".join(commands) + "\n").encode()
    return "\n".join([
        "#!/bin/sh",
        "set -e",
        "mkdir -p /var/lib/e2e-ssm",
        f"echo {base64.b64encode(script).decode()} | base64 -d > /var/lib/e2e-ssm/_script.sh",
        f"echo {base64.b64encode(SEQUENCE.read_bytes()).decode()} | base64 -d > /var/lib/e2e-ssm/sequence.sh",
        "chmod 0700 /var/lib/e2e-ssm/_script.sh /var/lib/e2e-ssm/sequence.sh",
        "systemd-run --no-block --unit=e2e-ssm --property=After=e2e-guest.service "
        "--property=After=cloud-final.service /bin/bash /var/lib/e2e-ssm/sequence.sh",
        "",
    ]).encode()  # fmt: skip


@dataclass
class SsmRun:
    suite: str
    run: vm.Run
    commands: List[str]
    seconds: float

    @property
    def begin(self) -> Dict[str, str]:
        for line in self.run.grep("E2E-SSM-BEGIN "):
            return dict(_KV.findall(line.split("E2E-SSM-BEGIN ", 1)[1]))
        raise AssertionError(f"no E2E-SSM-BEGIN line; serial log {self.run.log}\n{self.run.tail()}")

    @property
    def steps(self) -> Dict[str, Dict[str, str]]:
        out: Dict[str, Dict[str, str]] = {}
        for _, text in self.run.lines:
            m = _STEP.search(text)
            if m:
                out[m.group(1)] = dict(_KV.findall(m.group(2)))
        return out

    def output(self, step: str) -> List[str]:
        return [
            m.group(2) for _, text in self.run.lines for m in [_OUT.search(text)] if m and m.group(1) == step
        ]

    @property
    def ended(self) -> bool:
        return bool(self.run.grep("E2E-SSM-END"))


def running_machine(suite: str = images.DEFAULT_SUITE) -> SsmRun:
    started = time.monotonic()
    commands = document_commands()
    img = images.build_image(images.AL2, suite=suite)
    wd = workdir(f"ssm-{suite}")
    run = vm.boot(
        img,
        name=f"ssm-{suite}",
        workdir=wd,
        user_data=guest_user_data(commands),
        instance_id=f"i-e2e-ssm-{suite}",
        memory_mib=MEMORY_MIB,
        extra_append="e2e.hold=1",
        timeout_s=900,
    )
    return SsmRun(suite, run, commands, time.monotonic() - started)


def summary(r: SsmRun) -> Dict[str, object]:
    return {
        "suite": r.suite, "seconds": round(r.seconds, 1), "script_bytes": len("\n".join(r.commands) + "\n"),
        "begin": r.begin, "steps": r.steps,
        "result_lines": {s: [line for line in r.output(s) if "backlog_limit" in line] for s in r.steps},
    }  # fmt: skip


if __name__ == "__main__":
    import sys

    for suite in sys.argv[1:] or [images.DEFAULT_SUITE]:
        print(json.dumps(summary(running_machine(suite)), indent=1), flush=True)
