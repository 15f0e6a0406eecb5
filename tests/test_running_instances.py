"""Instances already running keep their user data (a change would stop and start them); new ones boot tuned.

The record of what runs is context (``cdk.context.json``), written by ``cdk-audit-backlog impact --record``;
here it is passed the way CDK passes context, through ``cdk.App(context=...)``.
"""

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ssm as ssm

from cdk_audit_backlog import METADATA_KEY, AuditBacklog
from cdk_audit_backlog.deployed_context import context_key

ENV = cdk.Environment(account="123456789012", region="us-east-1")
BEGIN = "# >>> cdk-audit-backlog >>>"


def build(context=None, env=ENV, association=False, aspect=True, **options):
    """Stack "S": one t3.micro Instance ("Web") and one m5.large LaunchTemplate ("Lt")."""
    app = cdk.App(context=context or {})
    stack = cdk.Stack(app, "S", env=env)
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
    web = ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    web.user_data.add_commands("echo mine")
    ec2.LaunchTemplate(stack, "Lt", instance_type=ec2.InstanceType("m5.large"), machine_image=image,
                       user_data=ec2.UserData.for_linux())
    if association:
        ssm.CfnAssociation(stack, "Assoc", name="SomeDocument",
                           targets=[ssm.CfnAssociation.TargetProperty(
                               key="tag:aws:cloudformation:stack-name", values=["S"])])
    if aspect:
        AuditBacklog.apply_to(app, **options)
    web_id = stack.get_logical_id(web.node.default_child)
    return app, stack, web_id


def web_of(stack):
    (resource,) = assertions.Template.from_stack(stack).find_resources("AWS::EC2::Instance").values()
    return resource


def lt_of(stack):
    (resource,) = assertions.Template.from_stack(stack).find_resources("AWS::EC2::LaunchTemplate").values()
    return resource


def warnings(stack, id_):
    found = assertions.Annotations.from_stack(stack).find_warning(
        "*", assertions.Match.string_like_regexp(".*")
    )
    return [w for w in found if f"[ack: {id_}]" in str(w.entry.data) or id_ in str(w.entry.data)]


def _web_id():
    return build(aspect=False)[2]


def key(stack_name="S", account="123456789012", region="us-east-1"):
    return context_key(account, region, stack_name)


def test_no_record_tunes_the_instance_and_warns_naming_the_command():
    _, stack, _ = build()
    web = web_of(stack)
    assert BEGIN in str(web["Properties"]["UserData"])
    assert "deployed" not in web["Metadata"][METADATA_KEY]
    found = warnings(stack, "cdk-audit-backlog:running-instance-unknown")
    assert len(found) == 1  # on the Instance only, not on the launch template
    text = str(found[0].entry.data)
    assert "S/Web/Resource" in text and "cdk-audit-backlog impact cdk.out --record" in text
    assert "stops and starts" in text


def test_recorded_instance_keeps_its_user_data_byte_for_byte():
    web_id = _web_id()
    _, untuned, _ = build(aspect=False)
    _, stack, _ = build(context={key(): [web_id]}, association=True)
    web = web_of(stack)
    assert web["Properties"]["UserData"] == web_of(untuned)["Properties"]["UserData"]
    assert BEGIN not in str(web["Properties"]["UserData"])
    meta = web["Metadata"][METADATA_KEY]
    assert meta["limit"] == 1024 and meta["instanceType"] == "t3.micro"
    assert meta["deployed"] == "user data kept; tuned by the association"
    assert not warnings(stack, "cdk-audit-backlog:running-instance-not-tuned")
    assert not warnings(stack, "cdk-audit-backlog:running-instance-unknown")
    # The launch template is not a running machine: it still gets the block (a new version, no restart).
    assert BEGIN in str(lt_of(stack)["Properties"]["LaunchTemplateData"]["UserData"])


def test_recorded_instance_without_an_association_is_kept_and_the_user_is_told():
    web_id = _web_id()
    _, stack, _ = build(context={key(): [web_id]})
    web = web_of(stack)
    assert BEGIN not in str(web["Properties"]["UserData"])
    assert web["Metadata"][METADATA_KEY]["deployed"].startswith("user data kept; not tuned until replaced")
    found = warnings(stack, "cdk-audit-backlog:running-instance-not-tuned")
    assert len(found) == 1 and "running_instances='restart'" in str(found[0].entry.data)


def test_instance_not_in_the_record_is_new_and_boots_tuned_without_a_warning():
    _, stack, _ = build(context={key(): ["SomeOtherInstance"]})
    web = web_of(stack)
    assert BEGIN in str(web["Properties"]["UserData"])
    assert not warnings(stack, "cdk-audit-backlog:running-instance-unknown")
    assert not warnings(stack, "cdk-audit-backlog:running-instance-not-tuned")


def test_a_record_for_another_stack_or_region_does_not_count():
    web_id = _web_id()
    for other in (key(stack_name="T"), key(region="eu-west-1"), key(account="999999999999")):
        _, stack, _ = build(context={other: [web_id]})
        assert BEGIN in str(web_of(stack)["Properties"]["UserData"])
        assert warnings(stack, "cdk-audit-backlog:running-instance-unknown")


def test_restart_tunes_a_recorded_instance_and_says_it_will_be_stopped_and_started():
    web_id = _web_id()
    _, stack, _ = build(context={key(): [web_id]}, running_instances="restart")
    web = web_of(stack)
    assert BEGIN in str(web["Properties"]["UserData"])
    assert "stops and starts" in web["Metadata"][METADATA_KEY]["deployed"]


def test_environment_agnostic_stack_takes_the_record_of_its_name_in_any_environment():
    web_id = build(env=None, aspect=False)[2]
    _, stack, _ = build(context={key(account="111111111111", region="eu-west-1"): [web_id]}, env=None)
    assert BEGIN not in str(web_of(stack)["Properties"]["UserData"])
    _, stack, _ = build(context={key(stack_name="Other"): [web_id]}, env=None)
    assert BEGIN in str(web_of(stack)["Properties"]["UserData"])


def test_bad_option_and_bad_record_are_clear_errors():
    with pytest.raises(ValueError, match="running_instances must be one of 'keep', 'restart', got 'stop'"):
        AuditBacklog(running_instances="stop")
    _, stack, _ = build(context={key(): "Web"})
    with pytest.raises(Exception, match="must be a list of logical ids"):
        assertions.Template.from_stack(stack)


def imdsv2_stack(context=None, **options):
    """An Instance with require_imdsv2: CDK gives it a launch template, referenced by LatestVersionNumber."""
    app = cdk.App(context=context or {})
    stack = cdk.Stack(app, "S", env=ENV)
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    web = ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"),
                       machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"}),
                       require_imdsv2=True)
    AuditBacklog.apply_to(app, **options)
    return stack, stack.get_logical_id(web.node.default_child)


def test_the_launch_template_of_a_running_instance_is_kept_too_a_new_version_would_replace_it():
    stack, web_id = imdsv2_stack()
    assert BEGIN in str(lt_of(stack)["Properties"]["LaunchTemplateData"].get("UserData"))  # no record: tuned
    stack, _ = imdsv2_stack(context={key(): [web_id]})
    lt = lt_of(stack)
    assert "UserData" not in lt["Properties"]["LaunchTemplateData"]  # as CDK made it: metadata options only
    assert lt["Metadata"][METADATA_KEY]["deployed"] == (
        f"user data kept: the running instance(s) {web_id} launch from it; a new version would replace them")
    assert BEGIN not in str(web_of(stack)["Properties"]["UserData"])
    stack, _ = imdsv2_stack(context={key(): [web_id]}, running_instances="restart")
    assert BEGIN in str(lt_of(stack)["Properties"]["LaunchTemplateData"].get("UserData"))
    assert "replaces the running instance(s)" in lt_of(stack)["Metadata"][METADATA_KEY]["deployed"]
