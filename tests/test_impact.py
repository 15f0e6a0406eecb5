"""``cdk-audit-backlog impact``: what the next deploy does to each deployed launch resource and its machines.

Two layers: ``template_impacts`` on small hand-written templates (one rule of CloudFormation's documented
update behaviour per test), and the command end to end on moto: a "before" stack created in moto from the
template of the app without the library, an "after" synthesized with it. The stack is never updated in moto
(moto does not model an Instance UserData update); the impact comes from the two templates.
"""

from __future__ import annotations

import json

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ssm as ssm
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdk_audit_backlog import AuditBacklog, cli
from cdk_audit_backlog.deployed_context import context_key
from cdk_audit_backlog.impact import assembly_stacks, template_impacts

# ------------------------------------------------------------------------------------ the rules alone

UD_OLD = {"Fn::Base64": "#!/bin/bash\necho mine\n"}
UD_NEW = {"Fn::Base64": "#!/bin/bash\n# >>> cdk-audit-backlog >>>\n# <<< cdk-audit-backlog <<<\necho mine\n"}


def instance(**props):
    base = {"ImageId": "ami-1", "InstanceType": "t3.micro", "UserData": UD_OLD}
    base.update(props)
    return {"Type": "AWS::EC2::Instance", "Properties": base}


def lt(user_data=UD_OLD):
    return {"Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateData": {"InstanceType": "m5.large", "UserData": user_data}}}


def group(update_policy=None):
    res = {"Type": "AWS::AutoScaling::AutoScalingGroup",
           "Properties": {"MinSize": "1", "MaxSize": "2", "LaunchTemplate": {
               "LaunchTemplateId": {"Ref": "Lt"}, "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}}}
    if update_policy:
        res["UpdatePolicy"] = update_policy
    return res


def tpl(**resources):
    return {"Resources": resources}


def one(before, after, logical_id):
    (found,) = [i for i in template_impacts("S", before, after) if i.logical_id == logical_id]
    return found


@pytest.mark.parametrize("prop, value", [("UserData", UD_NEW), ("InstanceType", "t3.small")])
def test_instance_user_data_or_type_change_stops_and_starts_it_and_user_data_is_not_rerun(prop, value):
    i = one(tpl(Web=instance()), tpl(Web=instance(**{prop: value})), "Web")
    assert i.interrupts and i.change == "updated" and i.properties == [prop]
    assert "stopped and started" in i.effect and "does not run the new user data" in i.effect


def test_instance_image_change_replaces_it():
    i = one(tpl(Web=instance()), tpl(Web=instance(ImageId="ami-2", UserData=UD_NEW)), "Web")
    assert i.interrupts and i.effect.startswith("replaced") and "ImageId" in i.effect


def test_instance_tags_only_is_no_interruption_and_unchanged_is_nothing():
    i = one(tpl(Web=instance()), tpl(Web=instance(Tags=[{"Key": "a", "Value": "b"}])), "Web")
    assert not i.interrupts and i.effect == "updated in place, no interruption"
    i = one(tpl(Web=instance()), tpl(Web=instance()), "Web")
    assert (i.change, i.interrupts) == ("unchanged", False)


def test_instance_metadata_change_alone_changes_nothing():
    after = instance()
    after["Metadata"] = {"cdk-audit-backlog": {"limit": 1024, "deployed": "user data kept"}}
    assert one(tpl(Web=instance()), tpl(Web=after), "Web").change == "unchanged"


def test_unmodelled_instance_property_counts_as_interrupting():
    i = one(tpl(Web=instance()), tpl(Web=instance(SecurityGroupIds=["sg-2"])), "Web")
    assert i.interrupts and "may interrupt" in i.effect


def test_launch_template_change_is_a_new_version_and_a_plain_group_keeps_its_instances():
    before = tpl(Lt=lt(), Asg=group())
    after = tpl(Lt=lt(UD_NEW), Asg=group())
    t = one(before, after, "Lt")
    assert (t.change, t.interrupts) == ("updated", False) and "new launch template version" in t.effect
    g = one(before, after, "Asg")
    assert (
        not g.interrupts and "keep their launch settings" in g.effect and "Lt (new version)" in g.properties
    )


def test_group_rolling_update_policy_replaces_running_instances():
    policy = {"AutoScalingRollingUpdate": {"MaxBatchSize": 2, "MinInstancesInService": 1}}
    g = one(tpl(Lt=lt(), Asg=group(policy)), tpl(Lt=lt(UD_NEW), Asg=group(policy)), "Asg")
    assert g.interrupts and "batches of 2 (at least 1 in service)" in g.effect


def test_group_replacing_update_policy_replaces_the_group():
    policy = {"AutoScalingReplacingUpdate": {"WillReplace": True}}
    g = one(tpl(Lt=lt(), Asg=group(policy)), tpl(Lt=lt(UD_NEW), Asg=group(policy)), "Asg")
    assert g.interrupts and "a new group replaces this one" in g.effect


def test_group_with_update_policy_but_unchanged_launch_is_untouched():
    policy = {"AutoScalingRollingUpdate": {"MaxBatchSize": 1}}
    g = one(tpl(Lt=lt(), Asg=group(policy)), tpl(Lt=lt(), Asg=group(policy)), "Asg")
    assert (g.change, g.interrupts) == ("unchanged", False)


def test_launch_configuration_change_replaces_it_without_touching_running_instances():
    lc = {"Type": "AWS::AutoScaling::LaunchConfiguration",
          "Properties": {"ImageId": "ami-1", "InstanceType": "m5.large", "UserData": UD_OLD}}
    lc_new = json.loads(json.dumps(lc))
    lc_new["Properties"]["UserData"] = UD_NEW
    asg = {"Type": "AWS::AutoScaling::AutoScalingGroup",
           "Properties": {"MinSize": "1", "MaxSize": "1", "LaunchConfigurationName": {"Ref": "Lc"}}}
    c = one(tpl(Lc=lc, Asg=asg), tpl(Lc=lc_new, Asg=asg), "Lc")
    assert not c.interrupts and "launch configuration replaced" in c.effect
    g = one(tpl(Lc=lc, Asg=asg), tpl(Lc=lc_new, Asg=asg), "Asg")
    assert not g.interrupts and "Lc (new version)" in g.properties


def test_eks_node_group_on_a_changed_launch_template_replaces_its_nodes():
    ng = {"Type": "AWS::EKS::Nodegroup", "Properties": {"LaunchTemplate": {"Id": {"Ref": "Lt"}}}}
    n = one(tpl(Lt=lt(), Ng=ng), tpl(Lt=lt(UD_NEW), Ng=ng), "Ng")
    assert n.interrupts and "EKS replaces the nodes" in n.effect


def test_new_association_tunes_running_machines_without_restart():
    assoc = {"Type": "AWS::SSM::Association", "Properties": {
        "Name": {"Ref": "Doc"}, "ScheduleExpression": "rate(30 minutes)",
        "Targets": [{"Key": "tag:aws:cloudformation:stack-name", "Values": ["S"]}]}}
    a = one(tpl(Web=instance()), tpl(Web=instance(), Assoc=assoc), "Assoc")
    assert (a.change, a.interrupts) == ("created", False)
    assert "tag:aws:cloudformation:stack-name=S" in a.effect and "rate(30 minutes)" in a.effect
    assert "no restart" in a.effect
    assoc["Properties"]["Targets"][0]["Values"] = [{"Ref": "AWS::StackName"}, {"Fn::ImportValue": "x"}]
    a = one(tpl(Web=instance()), tpl(Web=instance(), Assoc=assoc), "Assoc")
    assert "tag:aws:cloudformation:stack-name=S,<token>" in a.effect


def test_deleted_instance_is_terminated_and_a_type_change_is_delete_plus_create():
    i = one(tpl(Web=instance()), tpl(), "Web")
    assert (i.change, i.interrupts) == ("deleted", True)
    found = template_impacts("S", tpl(X=instance()), tpl(X=lt()))
    assert [(f.change, f.resource_type) for f in found] == [
        ("deleted", "AWS::EC2::Instance"), ("created", "AWS::EC2::LaunchTemplate")]


def test_undeployed_stack_only_creates():
    found = template_impacts("S", None, tpl(Web=instance(), Lt=lt(), Asg=group()))
    assert {f.change for f in found} == {"created"} and not any(f.interrupts for f in found)
    assert all("stack not deployed yet" in f.effect for f in found)


# ------------------------------------------------------------------------------ end to end, on moto

ENV = cdk.Environment(account="123456789012", region="us-east-1")


def synth_example(outdir, *, tuned, context=None, association=False):
    """The example app's shape (an Instance, an ASG from a launch template), synthesized to ``outdir``."""
    azs = {"availability-zones:account=123456789012:region=us-east-1": ["us-east-1a", "us-east-1b"]}
    app = cdk.App(outdir=str(outdir), context={**azs, **(context or {})})
    stack = cdk.Stack(app, "ImpactExample", env=ENV,
                      synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
    )
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"})
    web = ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    web.user_data.add_commands("echo web")
    user_data = ec2.UserData.for_linux()
    user_data.add_commands("echo worker")
    template = ec2.LaunchTemplate(stack, "WorkerTemplate", instance_type=ec2.InstanceType("m5.large"),
                                  machine_image=image, user_data=user_data,
                                  security_group=ec2.SecurityGroup(stack, "WorkerSg", vpc=vpc))
    autoscaling.AutoScalingGroup(stack, "Workers", vpc=vpc, launch_template=template, min_capacity=1,
                                 max_capacity=1)
    if association:  # stands in for the library's association construct: same resource type and target
        ssm.CfnAssociation(stack, "Tune", name="CdkAuditBacklogTune", schedule_expression="rate(30 minutes)",
                           targets=[ssm.CfnAssociation.TargetProperty(
                               key="tag:aws:cloudformation:stack-name", values=[stack.stack_name])])
    if tuned:
        AuditBacklog.apply_to(app)
    app.synth()
    return outdir


def rows_of(out: str):
    return {r["logical_id"]: r for r in json.loads(out)}


@pytest.fixture
def deployed_before(tmp_path, dummy_aws):
    """moto with the stack deployed from the app as it was before the library."""
    before = synth_example(tmp_path / "before", tuned=False)
    (s,) = assembly_stacks(before)
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(StackName="ImpactExample", TemplateBody=json.dumps(s.template))
        assert cfn.describe_stacks(StackName="ImpactExample")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
        yield tmp_path


def run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_adopting_the_library_without_a_record_would_stop_and_start_the_running_instance(
    deployed_before, capsys
):
    after = synth_example(deployed_before / "after", tuned=True, association=True)
    rc, out, err = run(["impact", str(after), "--format", "json"], capsys)
    assert rc == 1, err
    rows = rows_of(out)
    web = next(r for k, r in rows.items() if k.startswith("Web"))
    assert web["interrupts"] and web["properties"] == ["UserData"] and "stopped and started" in web["effect"]
    lt = next(r for k, r in rows.items() if k.startswith("WorkerTemplate"))
    assert (lt["change"], lt["interrupts"]) == ("updated", False)
    workers = next(r for k, r in rows.items() if k.startswith("Workers"))
    assert not workers["interrupts"] and "boot tuned" in workers["effect"]
    assert rows["Tune"]["change"] == "created" and "no restart" in rows["Tune"]["effect"]
    assert "1 interrupting running machines" in err


def test_record_then_resynthesize_and_the_deploy_interrupts_nothing(deployed_before, capsys, monkeypatch):
    context_file = deployed_before / "cdk.context.json"
    context_file.write_text(json.dumps({"availability-zones:account=1:region=x": ["x-1a"]}))
    first = synth_example(deployed_before / "first", tuned=True, association=True)
    rc, _, err = run(["impact", str(first), "--record", "--context-file", str(context_file)], capsys)
    assert rc == 0, err
    recorded = json.loads(context_file.read_text())
    key = context_key("123456789012", "us-east-1", "ImpactExample")
    (web_id,) = recorded[key]
    assert web_id.startswith("Web")
    assert recorded["availability-zones:account=1:region=x"] == ["x-1a"]  # other context kept
    assert "recorded 1 running instance(s)" in err and "synthesize again" in err

    again = synth_example(deployed_before / "again", tuned=True, association=True, context=recorded)
    rc, out, err = run(["impact", str(again), "--format", "json"], capsys)
    assert rc == 0, err
    rows = rows_of(out)
    assert (rows[web_id]["change"], rows[web_id]["interrupts"]) == ("unchanged", False)
    assert "0 interrupting running machines" in err
    # The launch template still gets the block: new Auto Scaling instances boot tuned.
    lt = next(r for k, r in rows.items() if k.startswith("WorkerTemplate"))
    assert lt["change"] == "updated" and "new launch template version" in lt["effect"]


def test_table_output_and_a_stack_that_is_not_deployed(tmp_path, dummy_aws, capsys):
    after = synth_example(tmp_path / "after", tuned=True)
    with mock_aws():
        rc, out, err = run(["impact", str(after)], capsys)
        assert rc == 0, err
        assert out.splitlines()[0].split()[:5] == ["stack", "resource", "type", "change", "interrupts"]
        assert "stack ImpactExample is not deployed in 123456789012/us-east-1" in err
        rc, _, err = run(
            ["impact", str(after), "--record", "--context-file", str(tmp_path / "c.json")], capsys
        )
        assert rc == 0
        recorded = json.loads((tmp_path / "c.json").read_text())
        assert recorded == {context_key("123456789012", "us-east-1", "ImpactExample"): []}
        rc, _, err = run(["impact", str(after), "--stack", "Nope"], capsys)
        assert rc == 2 and "no stack Nope" in err


def test_missing_assembly_is_a_usage_error(tmp_path, capsys):
    rc, _, err = run(["impact", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "run cdk synth first" in err


# ------------------------------------------------------------------------------------------ properties

_KINDS = st.sampled_from(
    ["AWS::EC2::Instance", "AWS::EC2::LaunchTemplate", "AWS::AutoScaling::LaunchConfiguration",
     "AWS::AutoScaling::AutoScalingGroup", "AWS::EKS::Nodegroup", "AWS::SSM::Association", "AWS::S3::Bucket"]
)
_VALUES = st.recursive(
    st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_RESOURCES = st.dictionaries(
    st.from_regex(r"[A-Z][A-Za-z0-9]{0,6}", fullmatch=True),
    st.builds(
        lambda kind, props: {"Type": kind, "Properties": props},
        _KINDS,
        st.dictionaries(
            st.sampled_from(["UserData", "InstanceType", "Tags", "LaunchTemplate", "ImageId"]),
            _VALUES,
            max_size=3,
        ),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(_RESOURCES)
def test_deploying_the_deployed_template_again_changes_and_interrupts_nothing(resources):
    found = template_impacts("S", {"Resources": resources}, {"Resources": resources})
    assert all(f.change == "unchanged" and not f.interrupts for f in found)


@settings(max_examples=200, deadline=None)
@given(_RESOURCES, st.data())
def test_any_changed_user_data_of_a_deployed_instance_interrupts_it(resources, data):
    resources = {k: v for k, v in resources.items() if v["Type"] == "AWS::EC2::Instance"}
    assume(resources)
    lid = data.draw(st.sampled_from(sorted(resources)))
    after = json.loads(json.dumps(resources))
    after[lid]["Properties"]["UserData"] = ["changed", resources[lid]["Properties"].get("UserData")]
    (found,) = [
        f
        for f in template_impacts("S", {"Resources": resources}, {"Resources": after})
        if f.logical_id == lid
    ]
    assert found.interrupts and "UserData" in found.properties


def test_stacks_inside_a_stage_are_read_from_the_nested_assembly(tmp_path):
    app = cdk.App(outdir=str(tmp_path / "out"))
    stage = cdk.Stage(app, "Prod", env=ENV)
    stack = cdk.Stack(stage, "Inner", stack_name="ProdInner")
    ec2.CfnLaunchTemplate(stack, "Lt", launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
        instance_type="m5.large"))
    cdk.Stack(app, "Top", env=ENV)
    app.synth()
    found = {s.stack_name: s for s in assembly_stacks(tmp_path / "out")}
    assert set(found) == {"ProdInner", "Top"}
    assert (found["ProdInner"].account, found["ProdInner"].region) == ("123456789012", "us-east-1")
    assert "Lt" in found["ProdInner"].template["Resources"]


def test_instance_on_a_launch_template_that_gets_a_new_version_is_replaced():
    # ec2.Instance(require_imdsv2=True): the Instance names its template and LatestVersionNumber.
    spec = {"LaunchTemplateName": "WebLt", "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}
    before = tpl(Lt=lt(), Web=instance(LaunchTemplate=spec))
    after = tpl(Lt=lt(UD_NEW), Web=instance(LaunchTemplate=spec))
    i = one(before, after, "Web")
    assert i.interrupts and i.effect.startswith("replaced") and "LaunchTemplate" in i.effect
    assert one(before, before, "Web").change == "unchanged"
