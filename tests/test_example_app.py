"""The example app as users run it: python, the real CDK CLI, cfn-lint, a snapshot (the built wheel:
test_release.py)."""

import json
import os
import subprocess
import sys

import pytest

from cdk_audit_backlog.testing import launches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = "AuditBacklogExample"
VENV_BIN = os.path.join(REPO, ".venv", "bin")


def _env(**extra):
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ["PATH"], **extra)
    # This checkout's package, whatever the venv has installed (an editable install may point elsewhere).
    env["PYTHONPATH"] = os.path.join(REPO, "constructs")
    return env


@pytest.fixture(scope="module")
def example_template(tmp_path_factory):
    out = tmp_path_factory.mktemp("cdk.out")
    subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=_env(CDK_OUTDIR=str(out)), check=True, timeout=300
    )
    with open(out / f"{STACK}.template.json") as f:
        return json.load(f), out / f"{STACK}.template.json"


def test_every_launch_in_the_example_carries_the_block_once(example_template):
    template, _ = example_template
    found = {launch.logical_id: launch for launch in launches(template)}
    kinds = sorted(launch.resource_type for launch in found.values())
    assert kinds == ["AWS::EC2::Instance", "AWS::EC2::LaunchTemplate"]
    targets = {launch.resource_type: launch.tuning.target for launch in found.values()}
    assert targets == {"AWS::EC2::Instance": 1024, "AWS::EC2::LaunchTemplate": 8192}
    assert all(launch.tuning.count == 1 for launch in found.values())


def test_example_template_snapshot(example_template, snapshot):
    template, _ = example_template
    assert template == snapshot


def test_cfn_lint_finds_no_errors(example_template):
    _, path = example_template
    result = subprocess.run(
        [os.path.join(VENV_BIN, "cfn-lint"), str(path)], capture_output=True, text=True, timeout=300
    )
    # cfn-lint's exit code is a bit mask: 2 = error, 4 = warning, 8 = informational.
    assert result.returncode & 2 == 0, result.stdout + result.stderr


def test_the_association_targets_the_instance_and_the_group_by_the_stack_name_tag(example_template):
    template, _ = example_template
    res = template["Resources"]
    (doc_id,) = [k for k, r in res.items() if r["Type"] == "AWS::SSM::Document"]
    # the tuning association (its own document) and the monitoring's (the AWS document that configures the
    # CloudWatch agent): both on the stack's machines
    associations = sorted(
        (r for r in res.values() if r["Type"] == "AWS::SSM::Association"),
        key=lambda r: str(r["Properties"]["Name"]),
    )
    names = [a["Properties"]["Name"] for a in associations]
    assert names == ["AmazonCloudWatch-ManageAgent", {"Ref": doc_id}]
    for assoc in associations:
        assert assoc["Properties"]["Targets"] == [
            {"Key": "tag:aws:cloudformation:stack-name", "Values": [{"Ref": "AWS::StackName"}]}
        ]
    # CloudFormation puts that tag on the stack's Instances and on its Auto Scaling groups and their
    # instances: both launches are resources of this very template (not of a nested stack).
    kinds = {r["Type"] for r in res.values()}
    assert {"AWS::EC2::Instance", "AWS::AutoScaling::AutoScalingGroup"} <= kinds
    assert "AWS::CloudFormation::Stack" not in kinds


def test_moto_creates_the_document_skips_the_association_and_tags_the_instance(example_template, dummy_aws):
    """What moto's CloudFormation does with the fleet resources (README, "Machines that already run")."""
    import boto3
    from moto import mock_aws

    template, _ = example_template
    template = json.loads(json.dumps(template))
    for name, p in list(template["Parameters"].items()):  # SSM-typed parameters moto cannot resolve
        if p["Type"].startswith("AWS::SSM::Parameter"):
            template["Parameters"][name] = {"Type": "String", "Default": "ami-12c6146b"}
    template.pop("Rules", None)
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template),
                                                    Capabilities=["CAPABILITY_IAM"])
        docs = boto3.client("ssm").list_documents(Filters=[{"Key": "Owner", "Values": ["Self"]}])[
            "DocumentIdentifiers"
        ]
        assert [(d["DocumentType"], d["SchemaVersion"]) for d in docs] == [("Command", "2.2")]
        found = boto3.client("ec2").describe_instances(
            Filters=[{"Name": "tag:aws:cloudformation:stack-name", "Values": [STACK]}])["Reservations"]
        tagged = [i for r in found for i in r["Instances"]]
        assert len(tagged) >= 1  # the Instance (moto does not copy the stack tags onto group instances)
        with pytest.raises(Exception, match="not been implemented"):
            boto3.client("ssm").list_associations()


def test_the_example_monitors_its_instance_and_its_group(example_template):
    from cdk_audit_backlog import monitoring_metrics as mm

    template, _ = example_template
    res = template["Resources"]
    by_type = {}
    for logical_id, r in res.items():
        by_type.setdefault(r["Type"], []).append((logical_id, r))
    (instance_id,) = [k for k, _ in by_type["AWS::EC2::Instance"]]
    (group_id,) = [k for k, _ in by_type["AWS::AutoScaling::AutoScalingGroup"]]
    assert len(by_type["AWS::SSM::Parameter"]) == 1 and len(by_type["AWS::CloudWatch::Dashboard"]) == 1
    watched = sorted(
        (p["Metrics"][0]["MetricStat"]["Metric"]["MetricName"],
         json.dumps(p["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"]))
        for p in (r["Properties"] for _, r in by_type["AWS::CloudWatch::Alarm"])
    )
    assert watched == sorted(
        (name, json.dumps([{"Name": dim, "Value": {"Ref": ref}}]))
        for name in ("AuditLostEvents", "AuditBacklogUsePercent")
        for dim, ref in ((mm.INSTANCE_DIMENSION, instance_id), (mm.GROUP_DIMENSION, group_id))
    )
    # the sampler is on in both launches' blocks and in the association's command
    assert json.dumps(template).count(f"CAB_MONITOR={mm.DEFAULT_INTERVAL_S}") == 3


@pytest.mark.cli
def test_real_cdk_cli_synthesizes_the_example(tmp_path):
    npx = subprocess.run(
        ["npx", "--no-install", "cdk", "--version"], cwd=REPO, capture_output=True, text=True, env=_env()
    )
    assert npx.returncode == 0, "the CDK CLI is not installed: run `make setup` (npm ci)\n" + npx.stderr
    result = subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--no-notices", "--quiet", "-o", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / f"{STACK}.template.json") as f:
        template = json.load(f)
    assert {launch.tuning.target for launch in launches(template)} == {1024, 8192}

