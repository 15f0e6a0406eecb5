"""EC2 Fleet and Spot Fleet: the launch templates they use are tuned for the types they launch, the check
holds them to the policy of those types, and `impact` says what a deploy does to a fleet."""

import importlib

import aws_cdk as cdk
import pytest
from aws_cdk import assertions

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.check import AuditBacklogCheck
from cdk_audit_backlog.impact import template_impacts
from cdk_audit_backlog.template_relations import launch_template_users
from cdk_audit_backlog.testing import launches

FLEETS = importlib.import_module("tests.apps.fleets")


def _synth(**options):
    app = cdk.App()
    (stack,) = FLEETS.build(app)
    AuditBacklog.apply_to(app, **options)
    return stack, assertions.Template.from_stack(stack).to_json()


@pytest.fixture(scope="module")
def tuned():
    return _synth()


def _launch(template, prefix):
    (found,) = [lt for lt in launches(template) if lt.logical_id.startswith(prefix)]
    return found


def test_an_ec2_fleets_overrides_size_its_launch_template_per_machine(tuned):
    _, template = tuned
    fleet_lt = _launch(template, "FleetLt")
    assert fleet_lt.metadata["limit"] == "auto" and fleet_lt.tuning.target is None
    assert fleet_lt.per_type == {"m5.large": 8192, "r5.4xlarge": 131072}


def test_a_spot_fleet_config_without_overrides_launches_the_templates_own_type(tuned):
    _, template = tuned
    spot_lt = _launch(template, "SpotLt")
    # t3.micro is the template's own type (the config without overrides), t3.small the other config's.
    assert spot_lt.per_type == {"t3.micro": 1024, "t3.small": 2048}


def test_one_fleet_type_gives_a_fixed_limit():
    app = cdk.App()
    stack = cdk.Stack(app, "One", env=FLEETS.ENV)
    lt = cdk.aws_ec2.LaunchTemplate(
        stack, "Lt", machine_image=FLEETS.IMAGE, user_data=cdk.aws_ec2.UserData.for_linux()
    )
    cdk.aws_ec2.CfnEC2Fleet(
        stack, "Fleet",
        target_capacity_specification=cdk.aws_ec2.CfnEC2Fleet.TargetCapacitySpecificationRequestProperty(
            total_target_capacity=1
        ),
        launch_template_configs=[
            cdk.aws_ec2.CfnEC2Fleet.FleetLaunchTemplateConfigRequestProperty(
                launch_template_specification=cdk.aws_ec2.CfnEC2Fleet.FleetLaunchTemplateSpecificationRequestProperty(
                    launch_template_id=lt.launch_template_id, version="$Latest"
                ),
                overrides=[cdk.aws_ec2.CfnEC2Fleet.FleetLaunchTemplateOverridesRequestProperty(instance_type="c5.2xlarge")],
            )
        ],
    )
    AuditBacklog.apply_to(app)
    (launch,) = launches(assertions.Template.from_stack(stack).to_json())
    assert launch.tuning.target == 16384 and launch.metadata["instanceType"] == "c5.2xlarge"
    assert "the groups that use this launch template" in launch.metadata["reason"]


def test_the_reader_sees_each_fleet_use_with_its_overrides(tuned):
    _, template = tuned
    resources = template["Resources"]
    fleet_lt = next(k for k in resources if k.startswith("FleetLt"))
    spot_lt = next(k for k in resources if k.startswith("SpotLt"))
    (fleet_use,) = launch_template_users(resources, fleet_lt)
    assert fleet_use.user_type == "AWS::EC2::EC2Fleet" and fleet_use.instance_types == (
        "m5.large",
        "r5.4xlarge",
    )
    spot_uses = launch_template_users(resources, spot_lt)
    assert [(u.user_type, u.instance_types) for u in spot_uses] == [
        ("AWS::EC2::SpotFleet", None),
        ("AWS::EC2::SpotFleet", ("t3.small",)),
    ]


def test_the_check_holds_a_fleets_template_to_the_policy_of_every_type_it_launches(tuned):
    _, template = tuned
    assert AuditBacklogCheck().check_template(template) == []
    _, fixed = _synth(backlog_limit=8192)  # fine for m5.large, below the policy for r5.4xlarge
    findings = AuditBacklogCheck().check_template(fixed)
    below = {f.logical_id for f in findings if f.rule == "BelowPolicy"}
    assert any(lid.startswith("FleetLt") for lid in below), findings
    assert not any(lid.startswith("SpotLt") for lid in below), findings


def test_inline_spot_launch_specifications_are_left_alone_with_a_warning(tuned):
    stack, template = tuned
    warnings = assertions.Annotations.from_stack(stack).find_warning(
        "*", assertions.Match.string_like_regexp("inline launch")
    )
    assert len(warnings) == 1 and "Fleets/Inline" in str(warnings[0].entry.data)
    inline = next(r for k, r in template["Resources"].items() if k.startswith("Inline"))
    spec = inline["Properties"]["SpotFleetRequestConfigData"]["LaunchSpecifications"][0]
    assert "cdk-audit-backlog" not in str(spec["UserData"])


# -- impact: what a deploy does to a fleet ----------------------------------------------------------------

LT = {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {"UserData": "old"}}}
LT_NEW = {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {"UserData": "new"}}}


def _fleet(version, kind="AWS::EC2::EC2Fleet", capacity=2):
    config = {"LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "Lt"}, "Version": version}}
    if kind == "AWS::EC2::SpotFleet":
        props = {
            "SpotFleetRequestConfigData": {"TargetCapacity": capacity, "LaunchTemplateConfigs": [config]}
        }
    else:
        props = {
            "TargetCapacitySpecification": {"TotalTargetCapacity": capacity},
            "LaunchTemplateConfigs": [config],
        }
    return {"Type": kind, "Properties": props}


def _impact(before, after):
    (found,) = [i for i in template_impacts("S", before, after) if i.logical_id == "Fleet"]
    return found


@pytest.mark.parametrize("kind", ["AWS::EC2::EC2Fleet", "AWS::EC2::SpotFleet"])
def test_a_fleet_on_a_pinned_template_version_is_replaced_when_the_template_changes(kind):
    version = {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}
    impact = _impact(
        {"Resources": {"Lt": LT, "Fleet": _fleet(version, kind)}},
        {"Resources": {"Lt": LT_NEW, "Fleet": _fleet(version, kind)}},
    )
    assert impact.interrupts and impact.effect.startswith("replaced: a new fleet"), impact


@pytest.mark.parametrize("kind", ["AWS::EC2::EC2Fleet", "AWS::EC2::SpotFleet"])
def test_a_fleet_on_latest_keeps_its_instances_and_launches_the_new_version(kind):
    impact = _impact(
        {"Resources": {"Lt": LT, "Fleet": _fleet("$Latest", kind)}},
        {"Resources": {"Lt": LT_NEW, "Fleet": _fleet("$Latest", kind)}},
    )
    assert not impact.interrupts and "from now on boot tuned" in impact.effect, impact


def test_an_ec2_fleets_capacity_changes_in_place_and_a_deleted_fleet_interrupts():
    before = {"Resources": {"Lt": LT, "Fleet": _fleet("$Latest", capacity=2)}}
    resized = _impact(before, {"Resources": {"Lt": LT, "Fleet": _fleet("$Latest", capacity=3)}})
    assert not resized.interrupts and resized.change == "updated", resized
    deleted = _impact(before, {"Resources": {"Lt": LT}})
    assert deleted.interrupts and deleted.change == "deleted"
    unchanged = _impact(before, before)
    assert unchanged.change == "unchanged" and not unchanged.interrupts
