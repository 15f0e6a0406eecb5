"""AuditBacklogAssociation: the SSM document and State Manager association that tune running machines.

Template assertions for the shape that matters, the document's commands run by ``/bin/sh`` on fixture roots
(as the SSM agent runs a runShellScript step), cfn-lint, snapshots, and every option's validation.
"""

from __future__ import annotations

import json
import os
import subprocess

import aws_cdk as cdk
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Annotations, Match, Template

from cdk_audit_backlog import AuditBacklog, BacklogPolicy
from cdk_audit_backlog.association import (
    NO_ROLE_WARNING,
    AssociationOptions,
    AssociationTarget,
    AuditBacklogAssociation,
)
from cdk_audit_backlog.user_data import BlockInputs, render_block
from tests.boot import fakes
from tests.boot import fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = "AmazonSSMManagedInstanceCore"


def _vpc(stack):
    return ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)],
    )


def _launches(stack, vpc=None, *, template_role=False):
    """An Instance, an ASG from a launch configuration, and an ASG from a launch template."""
    vpc = vpc or _vpc(stack)
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
    ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    autoscaling.AutoScalingGroup(
        stack, "Legacy", vpc=vpc, instance_type=ec2.InstanceType("t3.small"), machine_image=image
    )
    role = (
        iam.Role(stack, "WorkerRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        if template_role
        else None
    )
    lt = ec2.LaunchTemplate(
        stack, "WorkerTemplate", instance_type=ec2.InstanceType("m5.large"), machine_image=image, role=role
    )
    autoscaling.AutoScalingGroup(stack, "Workers", vpc=vpc, launch_template=lt)


def _stack(app=None, name="Fleet"):
    app = app or cdk.App()
    return cdk.Stack(app, name, env=cdk.Environment(account="123456789012", region="us-east-1"))


def _template(stack) -> dict:
    return Template.from_stack(stack).to_json()


def _of_type(template: dict, kind: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _run_command(template: dict) -> list:
    (doc,) = _of_type(template, "AWS::SSM::Document").values()
    (step,) = doc["Properties"]["Content"]["mainSteps"]
    return step["inputs"]["runCommand"]


def _roles_with_core(template: dict) -> set:
    out = set()
    for logical_id, r in _of_type(template, "AWS::IAM::Role").items():
        if CORE in json.dumps(r["Properties"].get("ManagedPolicyArns", [])):
            out.add(logical_id)
    return out


# -- document ----------------------------------------------------------------------------------------------


def test_document_is_a_schema_2_2_command_with_one_linux_shell_step():
    stack = _stack()
    AuditBacklogAssociation(stack, "Tune")
    t = Template.from_stack(stack)
    t.resource_count_is("AWS::SSM::Document", 1)
    t.has_resource_properties("AWS::SSM::Document", {
        "DocumentType": "Command",
        "DocumentFormat": "JSON",
        "UpdateMethod": "NewVersion",
        "Content": {
            "schemaVersion": "2.2",
            "parameters": Match.absent(),  # nothing typed at run time reaches the shell
            "mainSteps": [{
                "action": "aws:runShellScript",
                "name": "setAuditBacklogLimit",
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {"runCommand": Match.any_value()},
            }],
        },
    })  # fmt: skip


def test_document_runs_the_same_rendered_script_as_the_user_data_block_in_auto_mode():
    stack = _stack()
    AuditBacklogAssociation(
        stack,
        "Tune",
        policy=BacklogPolicy(memory_fraction=0.02),
        allow_lower=True,
        backlog_wait_time=6000,
        kernel_cmdline=True,
        install_auditd=True,
    )
    lines = _run_command(_template(stack))
    block = render_block(
        BlockInputs(
            target=None,
            policy=BacklogPolicy(memory_fraction=0.02),
            allow_lower=True,
            backlog_wait_time=6000,
            kernel_cmdline=True,
            install_auditd=True,
            source="ssm-association",
        )
    ).splitlines()
    # user data: marker, `/bin/bash -s <<'X' || true`, script, X, marker; the document: the same without
    # the markers and without `|| true`, so the script's exit status is the step's.
    assert block[1] == lines[0] + " || true"
    assert lines[1:] == block[2:-1]
    assert "CAB_TARGET=auto" in lines and "CAB_FRACTION_PPM=20000" in lines and "CAB_WAIT=6000" in lines
    assert (
        "CAB_ALLOW_LOWER=1" in lines and "CAB_KERNEL_CMDLINE=1" in lines and "CAB_INSTALL_AUDITD=1" in lines
    )


def test_a_fixed_backlog_limit_reaches_the_document():
    stack = _stack()
    AuditBacklogAssociation(stack, "Tune", backlog_limit=65536)
    assert "CAB_TARGET=65536" in _run_command(_template(stack))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(scope="module")
def document_lines():
    stack = _stack()
    AuditBacklogAssociation(stack, "Tune")
    return _run_command(_template(stack))


def test_document_commands_tune_a_running_al2_layout_from_memtotal_and_exit_0(
    tmp_path, sandbox, document_lines
):
    root = tmp_path / "al2"
    fx.build(root, "al2", mem_kib=8_000_000)  # 8,000,000 kB -> 8192 by the policy
    loads = fx.kernel(root)["loads"]
    r = fx.run_ssm_step(tmp_path, document_lines, root, sandbox)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "cdk-audit-backlog: backlog_limit 320 -> 8192 (ssm-association, MemTotal 8000000 kB; "
        "method auditctl; lost 0)" in r.stdout.splitlines()
    )
    assert fx.kernel(root)["backlog_limit"] == 8192 and fx.kernel(root)["loads"] == loads  # no reload
    assert fakes.boot(root)["backlog_limit"] == 8192
    fx.clear_calls(root)
    again = fx.run_ssm_step(tmp_path, document_lines, root, sandbox)
    assert again.returncode == 0 and "method none" in again.stdout
    assert [c for c in fx.calls(root) if c != "auditctl -s"] == []


@pytest.mark.parametrize("layout,status", [("ubuntu2404-no-auditd", 3), ("al2023-fedora-file", 0)])
def test_document_exit_status_is_the_scripts(tmp_path, sandbox, document_lines, layout, status):
    root = tmp_path / layout
    fx.build(root, layout)
    r = fx.run_ssm_step(tmp_path, document_lines, root, sandbox)
    assert r.returncode == status, r.stdout + r.stderr


def test_document_commands_pass_shellcheck(tmp_path, document_lines):
    path = tmp_path / "_script.sh"
    path.write_text("#!/bin/sh\n" + "\n".join(document_lines) + "\n")
    r = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "shellcheck"), str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- association ------------------------------------------------------------------------------------------


def test_association_defaults_target_the_stacks_own_instances():
    stack = _stack()
    AuditBacklogAssociation(stack, "Tune")
    t = Template.from_stack(stack)
    doc_id = next(iter(_of_type(t.to_json(), "AWS::SSM::Document")))
    t.has_resource_properties("AWS::SSM::Association", {
        "Name": {"Ref": doc_id},
        "DocumentVersion": "$LATEST",
        "Targets": [{"Key": "tag:aws:cloudformation:stack-name", "Values": [{"Ref": "AWS::StackName"}]}],
        "ScheduleExpression": "rate(1 day)",
        "ApplyOnlyAtCronInterval": Match.absent(),  # the first run happens when the association is created
        "MaxConcurrency": "50%",
        "MaxErrors": "25%",
        "ComplianceSeverity": "MEDIUM",
        "SyncCompliance": "AUTO",
        "OutputLocation": Match.absent(),
        "AssociationName": Match.absent(),
    })  # fmt: skip
    assert _of_type(t.to_json(), "AWS::IAM::Role") == {}


def test_every_option_reaches_the_template():
    stack = _stack()
    AuditBacklogAssociation(
        stack, "Tune",
        targets=[AssociationTarget.tag("karpenter.sh/nodepool", "default", "batch")],
        schedule="cron(0 3 ? * SUN *)", max_concurrency="10", max_errors="0", compliance_severity="HIGH",
        sync_compliance="MANUAL", output_bucket_name="audit-logs.example", output_key_prefix="ssm/",
        association_name="audit-backlog", document_name="Company-AuditBacklog",
    )  # fmt: skip
    t = Template.from_stack(stack)
    t.has_resource_properties("AWS::SSM::Document", {"Name": "Company-AuditBacklog"})
    t.has_resource_properties("AWS::SSM::Association", {
        "AssociationName": "audit-backlog",
        "Targets": [{"Key": "tag:karpenter.sh/nodepool", "Values": ["default", "batch"]}],
        "ScheduleExpression": "cron(0 3 ? * SUN *)",
        "MaxConcurrency": "10", "MaxErrors": "0", "ComplianceSeverity": "HIGH", "SyncCompliance": "MANUAL",
        "OutputLocation": {
            "S3Location": {"OutputS3BucketName": "audit-logs.example", "OutputS3KeyPrefix": "ssm/"}
        },
    })  # fmt: skip


def test_every_managed_instance_target():
    stack = _stack()
    AuditBacklogAssociation(stack, "Tune", targets=[AssociationTarget.all_managed_instances()])
    Template.from_stack(stack).has_resource_properties(
        "AWS::SSM::Association", {"Targets": [{"Key": "InstanceIds", "Values": ["*"]}]}
    )


# -- IAM: only where opted in ----------------------------------------------------------------------------


def test_no_iam_change_unless_opted_in():
    stack = _stack()
    _launches(stack, template_role=True)
    AuditBacklogAssociation(stack, "Tune")
    assert _roles_with_core(_template(stack)) == set()


def test_ssm_permissions_add_the_core_policy_to_every_visible_role_and_warn_where_there_is_none():
    stack = _stack()
    _launches(stack)  # the launch template has no role
    AuditBacklogAssociation(stack, "Tune", ssm_permissions=True)
    t = _template(stack)
    roles = _roles_with_core(t)
    assert {r for r in roles if r.startswith("WebInstanceRole")} and {
        r for r in roles if r.startswith("LegacyInstanceRole")
    }
    assert len(roles) == 2
    warnings = Annotations.from_stack(stack).find_warning("*", Match.string_like_regexp(NO_ROLE_WARNING))
    assert [w.id for w in warnings] == ["/Fleet/WorkerTemplate/Resource"]


def test_ssm_permissions_reach_a_launch_template_role_and_the_output_bucket():
    stack = _stack()
    _launches(stack, template_role=True)
    AuditBacklogAssociation(
        stack, "Tune", ssm_permissions=True, output_bucket_name="audit-logs", output_key_prefix="ssm/"
    )
    t = _template(stack)
    assert any(r.startswith("WorkerRole") for r in _roles_with_core(t)) and len(_roles_with_core(t)) == 3
    assert not Annotations.from_stack(stack).find_warning("*", Match.string_like_regexp(NO_ROLE_WARNING))
    assert "audit-logs/ssm/*" in json.dumps(_of_type(t, "AWS::IAM::Policy"))


def test_ssm_permissions_warn_on_a_raw_l1_launch():
    stack = _stack()
    ec2.CfnInstance(stack, "Raw", image_id="ami-12345678", instance_type="t3.micro")
    AuditBacklogAssociation(stack, "Tune", ssm_permissions=True)
    warnings = Annotations.from_stack(stack).find_warning("/Fleet/Raw", Match.string_like_regexp("raw L1"))
    assert len(warnings) == 1


# -- apply_to ----------------------------------------------------------------------------------------------


def test_apply_to_adds_one_association_per_stack_with_a_launch_stages_included():
    app = cdk.App()
    top = _stack(app, "Top")
    _launches(top)
    _stack(app, "NoLaunches")  # a stack without EC2 launches gets none
    cdk.aws_sns.Topic(app.node.find_child("NoLaunches"), "Topic")
    stage = cdk.Stage(app, "Prod")
    inner = _stack(stage, "Inner")
    _launches(inner)
    AuditBacklog.apply_to(app, association=True, backlog_wait_time=6000)
    AuditBacklog.apply_to(app, association=True, backlog_wait_time=6000)  # again: nothing twice
    for stack in (top, inner):
        t = _template(stack)
        assert len(_of_type(t, "AWS::SSM::Association")) == 1
        assert "CAB_WAIT=6000" in _run_command(t)
    assert _of_type(_template(app.node.find_child("NoLaunches")), "AWS::SSM::Association") == {}


def test_apply_to_gives_a_nested_stack_its_own_association():
    # A nested stack's instances carry the nested stack's name in aws:cloudformation:stack-name.
    app = cdk.App()
    parent = _stack(app, "Parent")
    nested = cdk.NestedStack(parent, "Inner")
    _launches(nested)
    AuditBacklog.apply_to(app, association=True)
    assert len(_of_type(_template(nested), "AWS::SSM::Association")) == 1
    assert _of_type(_template(parent), "AWS::SSM::Association") == {}


def test_apply_to_takes_association_options():
    app = cdk.App()
    stack = _stack(app)
    _launches(stack)
    AuditBacklog.apply_to(
        app, association=AssociationOptions(schedule="rate(12 hours)", ssm_permissions=True)
    )
    t = Template.from_stack(stack)
    t.has_resource_properties("AWS::SSM::Association", {"ScheduleExpression": "rate(12 hours)"})
    assert len(_roles_with_core(t.to_json())) == 2


def test_apply_to_without_association_adds_none():
    app = cdk.App()
    stack = _stack(app)
    _launches(stack)
    AuditBacklog.apply_to(app)
    assert _of_type(_template(stack), "AWS::SSM::Association") == {}


@pytest.mark.parametrize("bad", ["yes", 1, None, {"schedule": "rate(1 day)"}])
def test_apply_to_rejects_an_unknown_association_value(bad):
    app = cdk.App()
    _launches(_stack(app))
    with pytest.raises(ValueError, match="association must be"):
        AuditBacklog.apply_to(app, association=bad)


# -- validation --------------------------------------------------------------------------------------------

BAD = [
    ("schedule", "rate(5 minutes)"),
    ("schedule", "rate(1 days)"),
    ("schedule", "rate(2 day)"),
    ("schedule", "every day"),
    ("schedule", "cron(0 3 * *)"),
    ("schedule", 86400),
    ("max_concurrency", "0"),
    ("max_concurrency", "101%"),
    ("max_concurrency", 5),
    ("max_errors", "-1"),
    ("max_errors", "200%"),
    ("compliance_severity", "medium"),
    ("compliance_severity", "SEVERE"),
    ("sync_compliance", "auto"),
    ("output_bucket_name", "Bad_Bucket"),
    ("output_bucket_name", "ab"),
    ("output_key_prefix", "x" * 501),
    ("ssm_permissions", "yes"),
    ("association_name", "a b"),
    ("association_name", "ab"),
    ("document_name", "AWS-RunShellScript"),
    ("document_name", "amazon-tuning"),
    ("document_name", "AWSEC2-Audit"),
    ("document_name", "amznAudit"),
    ("document_name", "bad name"),
    ("backlog_limit", 0),
    ("backlog_wait_time", 600000),
    ("policy", 0.01),
    ("kernel_cmdline", 1),
    ("install_auditd", "no"),
    ("allow_lower", None),
    ("targets", []),
    ("targets", ["tag:Name"]),
    ("targets", [AssociationTarget.tag("a", "b")] * 6),
    ("targets", [AssociationTarget.all_managed_instances(), AssociationTarget.tag("a", "b")]),
]


@pytest.mark.parametrize("option,value", BAD, ids=[f"{o}={v!r}"[:60] for o, v in BAD])
def test_every_bad_option_is_a_value_error_naming_it(option, value):
    stack = _stack()
    with pytest.raises(ValueError, match=option if option != "ssm_permissions" else "ssm_permissions"):
        AuditBacklogAssociation(stack, "Tune", **{option: value})
    assert stack.node.try_find_child("Tune") is None  # nothing half-built


def test_output_key_prefix_needs_a_bucket():
    with pytest.raises(ValueError, match="output_key_prefix needs output_bucket_name"):
        AssociationOptions(output_key_prefix="ssm/")


@pytest.mark.parametrize(
    "key,values",
    [
        ("tag:Name", ("a",)),
        ("", ("a",)),
        ("Name", ()),
        ("Name", ("",)),
        ("Name", ("x" * 257,)),
        ("Name", tuple("v" * 51)),
    ],
)
def test_bad_tag_targets_are_value_errors(key, values):
    with pytest.raises(ValueError, match="targets"):
        AssociationTarget.tag(key, *values)


@pytest.mark.parametrize(
    "schedule",
    [
        "rate(30 minutes)",
        "rate(1 hour)",
        "rate(6 hours)",
        "rate(1 day)",
        "rate(7 days)",
        "cron(0 3 ? * SUN *)",
    ],
)
def test_good_schedules_are_accepted(schedule):
    assert AssociationOptions(schedule=schedule).schedule == schedule


# -- cfn-lint and snapshot ---------------------------------------------------------------------------------


def _full_stack():
    stack = _stack(name="AssociationFull")
    _launches(stack, template_role=True)
    AuditBacklogAssociation(
        stack,
        "Tune",
        ssm_permissions=True,
        output_bucket_name="audit-logs",
        output_key_prefix="ssm/",
        association_name="audit-backlog",
        document_name="Company-AuditBacklog",
        schedule="rate(12 hours)",
    )
    AuditBacklogAssociation(
        stack,
        "Everywhere",
        targets=[AssociationTarget.all_managed_instances()],
        backlog_wait_time=6000,
        kernel_cmdline=True,
    )
    return stack


def test_cfn_lint_finds_no_errors(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(_template(_full_stack())))
    r = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "cfn-lint"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode & 2 == 0, r.stdout + r.stderr  # bit 2: errors


def test_ssm_resources_snapshot(snapshot):
    t = _template(_full_stack())
    ssm_and_iam = {
        k: v for k, v in t["Resources"].items() if v["Type"].startswith(("AWS::SSM::", "AWS::IAM::"))
    }
    assert ssm_and_iam == snapshot
