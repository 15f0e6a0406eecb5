"""`make demo`, run for real: moto's server, the CDK CLI's bootstrap and deploy, the read-back table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.cli


def _rows(stdout: str):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("resource "))
    header = lines[start].split()
    rows = []
    for line in lines[start + 2:]:
        if line.startswith("demo:"):
            break
        # resource is "<id> (<label>)": split it off, the rest are single words.
        m = re.match(r"^(\S+ \([^)]*\))\s+(.*)$", line)
        rows.append(dict(zip(header, [m.group(1), *m.group(2).split()])))
    return rows


def _impact_rows(stdout: str):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stack ") and "interrupts" in line)
    header = ["stack", "resource", "type", "change", "interrupts"]
    rows = []
    for line in lines[start + 2:]:
        if line.startswith("demo:"):
            break
        rows.append(dict(zip(header, line.split()[:5])))
    return rows


def test_demo_deploys_the_example_to_moto_and_every_launch_is_tuned():
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "bootstrap: done" in out and "deploy: done" in out
    assert "verify: exit 0: verify: 3 checked, 0 untuned or below policy" in out
    # A second deploy of the same assembly: every launch resource unchanged, no machine interrupted.
    assert re.search(r"impact: exit 0: impact: \d+ resource\(s\), 0 interrupting running machines", out), out
    impact_rows = _impact_rows(out)
    assert {"Instance", "LaunchTemplate", "AutoScalingGroup", "Document", "Association"} == {
        r["type"] for r in impact_rows}
    assert all(r["interrupts"] == "no" and r["change"] == "unchanged" for r in impact_rows)
    # The example's association (apply_to(app, association=True)): moto created the document, skipped the
    # association; the demo says both.
    assert re.search(r"demo: ssm: document \S+ \(AuditBacklogAssociationDocument\w+\): Command, schema 2\.2, "
                     r"Active, steps aws:runShellScript, \d+ bytes of commands", out), out
    assert re.search(r"demo: ssm: association AuditBacklogAssociation\w+ in the deployed template: targets "
                     r"tag:aws:cloudformation:stack-name=AuditBacklogExample, schedule rate\(1 day\); moto's "
                     r"CloudFormation skips AWS::SSM::Association", out), out
    assert "!!" not in out + proc.stderr  # no Node end-of-life banner in the demo's output
    # health on the sampler's metrics (datagrams put into moto's CloudWatch as the agent would): every machine
    # has data, auditd owns the socket, nothing lost.
    assert re.search(r"demo: health: put 60 samples for each of \d+ machine\(s\)", out), out
    assert re.search(r"demo: health: exit 0: health: \d+ machine\(s\) over 24 h, 0 lost events", out), out
    health_rows = [line.split() for line in out.split("demo: health: cdk-audit-backlog health")[1]
                   .split("recommendations")[0].splitlines()[3:] if line.strip()]
    assert health_rows and all(r[3] == "0" and r[6] == "auditd" for r in health_rows), health_rows
    assert {r[2] for r in health_rows} == {"t3.micro", "m5.large"}

    rows = _rows(out)
    by_label = {re.search(r"\((.*)\)", r["resource"]).group(1): r for r in rows}
    web = next(v for k, v in by_label.items() if k.startswith("Web"))
    assert (web["kind"], web["instance_type"], web["memory_mib"], web["limit_chosen"]) == (
        "instance", "t3.micro", "1024", "1024")
    lt = next(v for k, v in by_label.items() if k.startswith("WorkerTemplate"))
    assert (lt["kind"], lt["instance_type"], lt["limit_chosen"]) == ("launch-template", "m5.large", "8192")
    workers = [v for k, v in by_label.items() if k.startswith("Workers") and k.endswith(" instance")]
    assert workers, "the ASG launched no instance"
    assert all(w["instance_type"] == "m5.large" and w["limit_chosen"] == "8192" for w in workers)
    assert all(r["block_in_user_data"] == "yes" for r in rows)

    # The emulator is gone: its pid no longer exists.
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
