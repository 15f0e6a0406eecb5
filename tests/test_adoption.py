"""Adopting the library in an app that is already deployed, with the real CDK CLI and moto's server.

The README's recipe, run for real: an app deployed without the library; then, with
``AuditBacklog.apply_to(app, association=True)`` added, ``impact`` says the deploy would stop and start the
running Instance (exit 1); ``impact --record`` writes the running Instance into the app's
``cdk.context.json``; the CDK CLI's next synth reads it, the Instance keeps its user data and ``impact``
says the deploy interrupts nothing (exit 0). The stack is never updated in moto (it does not model an
Instance UserData update): the impact comes from the deployed and the synthesized template.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.cli

sys.path.insert(0, str(Path(REPO) / "scripts"))
import demo  # noqa: E402  (moto server and emulator environment, as make demo runs them)

STACK = "AdoptExample"
APP = textwrap.dedent(
    """
    import os

    import aws_cdk as cdk
    from aws_cdk import aws_autoscaling as autoscaling
    from aws_cdk import aws_ec2 as ec2

    from cdk_audit_backlog import AuditBacklog

    app = cdk.App()
    stack = cdk.Stack(app, "AdoptExample")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)])
    image = ec2.MachineImage.latest_amazon_linux2023()
    web = ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    web.user_data.add_commands("echo web")
    template = ec2.LaunchTemplate(stack, "WorkerTemplate", instance_type=ec2.InstanceType("m5.large"),
                                  machine_image=image, user_data=ec2.UserData.for_linux(),
                                  security_group=ec2.SecurityGroup(stack, "WorkerSg", vpc=vpc))
    autoscaling.AutoScalingGroup(stack, "Workers", vpc=vpc, launch_template=template, min_capacity=1,
                                 max_capacity=1)
    if os.environ.get("ADOPT_LIBRARY") == "1":
        AuditBacklog.apply_to(app, association=True)
    app.synth()
    """
)


def cdk(args, cwd, env):
    cmd = [str(Path(REPO) / "node_modules" / ".bin" / "cdk"), *args, "--no-notices"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, " ".join(args) + "\n" + proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def impact(cwd, env, *args):
    cmd = [sys.executable, "-m", "cdk_audit_backlog", "impact", *args, "--region", demo.REGION]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_record_then_the_cli_synth_keeps_the_running_instance_and_nothing_is_interrupted(tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    (app_dir / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    server = demo.MotoServer(demo.free_port(), tmp_path / "moto.log")
    try:
        server.wait_ready()
        env = demo.emulator_env(server.url)
        env.pop("ADOPT_LIBRARY", None)
        cdk(
            ["bootstrap", f"aws://{demo.ACCOUNT}/{demo.REGION}", "-o", str(tmp_path / "boot.out")],
            app_dir,
            env,
        )
        # Before: the app as deployed today, without the library.
        cdk(
            [
                "deploy",
                STACK,
                "--method=direct",
                "--require-approval",
                "never",
                "-o",
                str(tmp_path / "before"),
            ],
            app_dir,
            env,
        )

        adopted = dict(env, ADOPT_LIBRARY="1")
        synth_log = cdk(["synth", "-q", "-o", str(tmp_path / "first")], app_dir, adopted)
        assert "cdk-audit-backlog:running-instance-unknown" in synth_log  # the warning names the command
        first = impact(app_dir, adopted, str(tmp_path / "first"), "--format", "json")
        assert first.returncode == 1, first.stdout + first.stderr
        rows = {r["logical_id"]: r for r in json.loads(first.stdout)}
        web_id = next(k for k in rows if k.startswith("Web"))
        assert rows[web_id]["interrupts"] and rows[web_id]["properties"] == ["UserData"]

        recorded = impact(app_dir, adopted, str(tmp_path / "first"), "--record")
        assert recorded.returncode == 0, recorded.stderr
        context = json.loads((app_dir / "cdk.context.json").read_text())
        key = (
            f"cdk-audit-backlog:deployed-instances:account={demo.ACCOUNT}:region={demo.REGION}:stack={STACK}"
        )
        assert context[key] == [web_id]

        # The CDK CLI reads cdk.context.json: the running Instance keeps its user data.
        synth_log = cdk(["synth", "-q", "-o", str(tmp_path / "again")], app_dir, adopted)
        assert "running-instance-unknown" not in synth_log
        assert "running-instance-not-tuned" not in synth_log  # the association is there
        again = impact(app_dir, adopted, str(tmp_path / "again"), "--format", "json")
        assert again.returncode == 0, again.stdout + again.stderr
        rows = {r["logical_id"]: r for r in json.loads(again.stdout)}
        assert (rows[web_id]["change"], rows[web_id]["interrupts"]) == ("unchanged", False)
        lt = next(r for k, r in rows.items() if k.startswith("WorkerTemplate"))
        assert (lt["change"], lt["interrupts"]) == ("updated", False)
        assert "new launch template version" in lt["effect"]
        workers = next(r for k, r in rows.items() if k.startswith("Workers"))
        assert not workers["interrupts"] and "keep their launch settings" in workers["effect"]
        association = next(r for r in rows.values() if r["resource_type"] == "AWS::SSM::Association")
        assert association["change"] == "created" and "no restart" in association["effect"]
        assert f"tag:aws:cloudformation:stack-name={STACK}" in association["effect"]
        template = json.loads((tmp_path / "again" / f"{STACK}.template.json").read_text())
        web = template["Resources"][web_id]
        assert web["Metadata"]["cdk-audit-backlog"]["deployed"] == "user data kept; tuned by the association"
    finally:
        server.stop()
