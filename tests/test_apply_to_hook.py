"""apply_to's single hook per scope: what it must still see, and what it must not cost.

apply_to adds no aspect to the app (a Python aspect on the app costs one jsii callback per construct): one
hidden leaf per scope runs once per synthesis, after the other aspects visited the stacks. These tests pin
what that design must keep from the per-construct aspect it replaced.
"""

import json
import os

import aws_cdk as cdk
import jsii
from aws_cdk import Aspects, assertions
from aws_cdk import aws_ec2 as ec2

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.testing import launches

IMAGE = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
ENV = cdk.Environment(account="123456789012", region="us-east-1")


def new_stack(app, name="S"):
    stack = cdk.Stack(app, name, env=ENV)
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    return stack, vpc


def tuned(stack):
    return {launch.logical_id: launch for launch in launches(assertions.Template.from_stack(stack))}


@jsii.implements(cdk.IAspect)
class _AddsAnInstance:
    """A user's aspect that creates a launch while aspects run."""

    def __init__(self, vpc):
        self.vpc = vpc

    def visit(self, node):
        if isinstance(node, cdk.Stack) and node.node.try_find_child("Late") is None:
            ec2.Instance(
                node, "Late", vpc=self.vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE
            )


@jsii.implements(cdk.IAspect)
class _AddsAUserDataLine:
    def visit(self, node):
        if isinstance(node, ec2.Instance):
            node.user_data.add_commands("echo added-by-an-aspect")


def test_apply_to_adds_no_aspect_to_the_app_or_its_stacks():
    app = cdk.App()
    stack, vpc = new_stack(app)
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    AuditBacklog.apply_to(app)
    assert not Aspects.of(app).all and not Aspects.of(stack).all
    (launch,) = tuned(stack).values()
    assert launch.tuning.target == 1024 and launch.tuning.count == 1


def test_launch_created_by_another_aspect_is_tuned():
    app = cdk.App()
    stack, vpc = new_stack(app)
    Aspects.of(app).add(_AddsAnInstance(vpc))
    AuditBacklog.apply_to(app)
    found = tuned(stack)
    late = next(launch for k, launch in found.items() if k.startswith("Late"))
    assert late.tuning.target == 8192 and late.tuning.count == 1


def test_user_data_line_added_by_another_aspect_is_kept_after_the_block():
    app = cdk.App()
    stack, vpc = new_stack(app)
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    inst.user_data.add_commands("echo mine")
    Aspects.of(app).add(_AddsAUserDataLine())
    AuditBacklog.apply_to(app)
    (launch,) = tuned(stack).values()
    body = launch.user_data
    assert launch.tuning.count == 1
    assert (
        body.index("# <<< cdk-audit-backlog <<<")
        < body.index("echo mine")
        < body.index("echo added-by-an-aspect")
    )


def test_apply_to_before_the_stacks_exist_still_tunes_them():
    app = cdk.App()
    AuditBacklog.apply_to(app)
    stack, vpc = new_stack(app)
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    (launch,) = tuned(stack).values()
    assert launch.tuning.target == 1024 and launch.tuning.count == 1


def test_plain_aspect_nearer_than_apply_to_wins_and_tunes_once():
    app = cdk.App()
    stack, vpc = new_stack(app)
    near = ec2.Instance(
        stack, "Near", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE
    )
    ec2.Instance(stack, "Far", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    Aspects.of(near).add(AuditBacklog(backlog_limit=65536))
    AuditBacklog.apply_to(app)
    found = tuned(stack)
    near_l = next(launch for k, launch in found.items() if k.startswith("Near"))
    far_l = next(launch for k, launch in found.items() if k.startswith("Far"))
    assert near_l.tuning.target == 65536 and near_l.tuning.count == 1
    assert near_l.metadata["reason"] == "backlog_limit set on the aspect"
    assert far_l.tuning.target == 1024 and far_l.tuning.count == 1


def test_apply_to_nearer_than_a_plain_app_aspect_wins():
    app = cdk.App()
    stack, vpc = new_stack(app)
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    Aspects.of(app).add(AuditBacklog(backlog_limit=999))
    AuditBacklog.apply_to(stack, backlog_limit=2048)
    (launch,) = tuned(stack).values()
    assert launch.tuning.target == 2048 and launch.tuning.count == 1


def test_calling_apply_to_twice_tunes_once_with_the_first():
    app = cdk.App()
    stack, vpc = new_stack(app)
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    AuditBacklog.apply_to(app)
    AuditBacklog.apply_to(app, backlog_limit=4096)
    (launch,) = tuned(stack).values()
    assert launch.tuning.target == 1024 and launch.tuning.count == 1


def _nested_template_assets(app_dir):
    """Asset hash -> the nested stack template file it names, from the parent's asset manifest."""
    out = {}
    for name in os.listdir(app_dir):
        if name.endswith(".assets.json"):
            with open(os.path.join(app_dir, name)) as f:
                for asset_hash, asset in json.load(f).get("files", {}).items():
                    if asset["source"]["path"].endswith(".nested.template.json"):
                        out[asset_hash] = asset["source"]["path"]
    return out


def test_nested_stack_template_asset_hash_covers_the_block(tmp_path):
    """The hook writes before prepareApp hashes nested stack templates: the hash of a tuned nested template
    differs from the untuned one (a hash taken before the block would let a deploy reuse the old template)."""
    hashes = []
    for tune in (False, True):
        out = tmp_path / ("tuned" if tune else "plain")
        app = cdk.App(outdir=str(out))
        stack = cdk.Stack(app, "Parent", env=ENV)
        nested = cdk.NestedStack(stack, "Nested")
        ec2.LaunchTemplate(nested, "Lt", instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE,
                           user_data=ec2.UserData.for_linux())
        if tune:
            AuditBacklog.apply_to(app)
        app.synth()
        (asset_hash, path), = _nested_template_assets(out).items()
        text = (out / path).read_text()
        assert ("# >>> cdk-audit-backlog >>>" in text) == tune
        hashes.append(asset_hash)
    assert hashes[0] != hashes[1]


def test_launch_in_a_stage_created_inside_a_stack_is_tuned_by_that_stage():
    app = cdk.App()
    outer = cdk.Stack(app, "Pipeline", env=ENV)
    stage = cdk.Stage(outer, "Prod")
    inner, vpc = new_stack(stage, "Svc")
    ec2.Instance(inner, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE)
    AuditBacklog.apply_to(app)
    (launch,) = tuned(inner).values()
    assert launch.tuning.target == 8192 and launch.tuning.count == 1
    assert launch.metadata["limit"] == 8192


def test_user_data_referring_to_another_stack_gets_the_import_not_a_dangling_ref():
    """The hook resolves user data before prepareApp turns a cross-stack reference into an import; such
    launches are read again after it (a Ref to the other stack's logical id would not deploy)."""
    from aws_cdk import aws_s3 as s3

    app = cdk.App()
    producer = cdk.Stack(app, "Producer", env=ENV)
    bucket = s3.Bucket(producer, "Bucket")
    stack, vpc = new_stack(app, "Consumer")
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    inst.user_data.add_commands(f"aws s3 ls s3://{bucket.bucket_name}")
    AuditBacklog.apply_to(app)
    template = assertions.Template.from_stack(stack).to_json()
    (resource,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Instance"]
    parts = resource["Properties"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    intrinsics = [p for p in parts if not isinstance(p, str)]
    assert intrinsics and all(list(p) == ["Fn::ImportValue"] for p in intrinsics), intrinsics
    assert "# >>> cdk-audit-backlog >>>" in parts[0]
