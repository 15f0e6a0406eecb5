"""AuditBacklog on Instance, LaunchTemplate and AutoScalingGroup: where the block goes, what it says, once."""

import base64
import os
import subprocess

import aws_cdk as cdk
import pytest
from aws_cdk import Aspects, assertions
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2

from cdk_audit_backlog import METADATA_KEY, AuditBacklog, BacklogPolicy

BEGIN = "# >>> cdk-audit-backlog >>>"
END = "# <<< cdk-audit-backlog <<<"


def decode(value) -> str:
    """Independent of the code under test: Fn::Base64 of a string or of an Fn::Join, tokens as ${...}."""
    if isinstance(value, str):
        return base64.b64decode(value).decode()
    (key, inner), = value.items()
    assert key == "Fn::Base64"
    if isinstance(inner, str):
        return inner
    delimiter, parts = inner["Fn::Join"]
    return delimiter.join(p if isinstance(p, str) else "${" + repr(p) + "}" for p in parts)


def user_data_of(resource: dict) -> str:
    props = resource["Properties"]
    value = (
        props["LaunchTemplateData"].get("UserData")
        if "LaunchTemplateData" in props
        else props.get("UserData")
    )
    return decode(value)


def cab_target(text: str) -> str:
    assert text.count(BEGIN) == 1 and text.count(END) == 1, text
    block = text[text.index(BEGIN) : text.index(END)]
    return next(line.split("=", 1)[1] for line in block.splitlines() if line.startswith("CAB_TARGET="))


def strip_block(text: str) -> str:
    start = text.index(BEGIN)
    end = text.index(END) + len(END) + 1
    return text[:start] + text[end:]


def new_stack(app=None, flags=None):
    app = app or cdk.App(context=flags or {})
    stack = cdk.Stack(app, "S", env=cdk.Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    return app, stack, vpc


def resources(stack, type_):
    return assertions.Template.from_stack(stack).find_resources(type_)


def only(stack, type_):
    found = resources(stack, type_)
    assert len(found) == 1, found
    return next(iter(found.values()))


IMAGE = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})


def test_instance_gets_block_right_after_shebang_and_user_lines_in_order():
    app, stack, vpc = new_stack()
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    inst.user_data.add_commands("echo one", "echo two; exit 0")
    Aspects.of(app).add(AuditBacklog())
    inst.user_data.add_commands("echo added-after-the-aspect")
    res = only(stack, "AWS::EC2::Instance")
    text = user_data_of(res)
    assert text.startswith("#!/bin/bash\n" + BEGIN + "\n")
    assert cab_target(text) == "1024"
    assert strip_block(text) == "#!/bin/bash\necho one\necho two; exit 0\necho added-after-the-aspect"
    assert res["Metadata"][METADATA_KEY] == {
        "limit": 1024, "instanceType": "t3.micro", "memoryMiB": 1024,
        "reason": "instance type t3.micro (1024 MiB) of the resource",
    }
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_launch_template_with_user_data_and_type():
    app, stack, _ = new_stack()
    ud = ec2.UserData.for_linux()
    ud.add_commands("echo hi")
    ec2.LaunchTemplate(
        stack, "LT", instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE, user_data=ud
    )
    AuditBacklog.apply_to(app)
    lt = only(stack, "AWS::EC2::LaunchTemplate")
    text = user_data_of(lt)
    assert cab_target(text) == "8192"
    assert strip_block(text) == "#!/bin/bash\necho hi"
    assert lt["Metadata"][METADATA_KEY]["limit"] == 8192


def test_launch_template_without_user_data_gets_one_created():
    app, stack, _ = new_stack(flags={"@aws-cdk/aws-ec2:launchTemplateDefaultUserData": False})
    lt = ec2.LaunchTemplate(stack, "LT", instance_type=ec2.InstanceType("c5.xlarge"))
    assert lt.user_data is None
    AuditBacklog.apply_to(app)
    text = user_data_of(only(stack, "AWS::EC2::LaunchTemplate"))
    assert text.startswith("#!/bin/bash\n" + BEGIN)
    assert cab_target(text) == "8192"


def mixed_group(stack, vpc, types, name="G"):
    lt = ec2.LaunchTemplate(stack, name + "Lt", machine_image=IMAGE, user_data=ec2.UserData.for_linux())
    autoscaling.AutoScalingGroup(
        stack, name, vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t)) for t in types
            ],
        ),
    )
    return lt


def block_line(text: str, name: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(name + "="))


def test_group_whose_types_map_to_different_limits_runs_auto_and_lists_them():
    app, stack, vpc = new_stack()
    mixed_group(stack, vpc, ["r5.2xlarge", "t3.medium"])
    AuditBacklog.apply_to(app)
    lt_res = only(stack, "AWS::EC2::LaunchTemplate")
    text = user_data_of(lt_res)
    # t3.medium (4 GiB) gets 4096, r5.2xlarge (64 GiB) 65536: one number would leave one of them wrong.
    assert cab_target(text) == "auto" and block_line(text, "CAB_SOURCE") == "mixed"
    meta = lt_res["Metadata"][METADATA_KEY]
    assert meta["limit"] == "auto"
    assert meta["perType"] == {"t3.medium": 4096, "r5.2xlarge": 65536}
    assert list(meta["perType"]) == ["t3.medium", "r5.2xlarge"]  # smallest memory first
    assert "instanceType" not in meta and "memoryMiB" not in meta
    assert "map to different limits (4096..65536)" in meta["reason"]


def test_per_type_limits_follow_the_aspects_policy():
    app, stack, vpc = new_stack()
    mixed_group(stack, vpc, ["m5.large", "r5.4xlarge"])
    AuditBacklog.apply_to(app, policy=BacklogPolicy(memory_fraction=0.02, maximum=65536))
    lt_res = only(stack, "AWS::EC2::LaunchTemplate")
    assert lt_res["Metadata"][METADATA_KEY]["perType"] == {"m5.large": 16384, "r5.4xlarge": 65536}
    assert block_line(user_data_of(lt_res), "CAB_FRACTION_PPM") == "20000"  # auto computes with that policy


def test_group_whose_types_all_map_to_one_limit_keeps_the_fixed_number():
    app, stack, vpc = new_stack()
    mixed_group(stack, vpc, ["m5.large", "t3.large"], name="Same")  # both 8 GiB
    # 256 GiB, 1 TiB: both the maximum
    mixed_group(stack, vpc, ["r5.8xlarge", "x2iedn.8xlarge"], name="Capped")
    AuditBacklog.apply_to(app)
    metas = {k: r["Metadata"][METADATA_KEY] for k, r in resources(stack, "AWS::EC2::LaunchTemplate").items()}
    same = next(m for k, m in metas.items() if k.startswith("SameLt"))
    capped = next(m for k, m in metas.items() if k.startswith("CappedLt"))
    assert same["limit"] == 8192 and "perType" not in same
    assert capped["limit"] == 262144 and "perType" not in capped and capped["instanceType"] == "r5.8xlarge"


def test_group_with_an_unknown_type_stays_auto_without_per_type_limits():
    app, stack, vpc = new_stack()
    mixed_group(stack, vpc, ["m5.large", "zz9.plural"])
    AuditBacklog.apply_to(app)
    lt_res = only(stack, "AWS::EC2::LaunchTemplate")
    meta = lt_res["Metadata"][METADATA_KEY]
    assert meta["limit"] == "auto" and "perType" not in meta and "zz9.plural" in meta["reason"]
    assert block_line(user_data_of(lt_res), "CAB_SOURCE") == "unknown"


def test_fixed_backlog_limit_on_the_aspect_wins_over_per_type_sizing():
    app, stack, vpc = new_stack()
    mixed_group(stack, vpc, ["m5.large", "r5.4xlarge"])
    AuditBacklog.apply_to(app, backlog_limit=65536)
    meta = only(stack, "AWS::EC2::LaunchTemplate")["Metadata"][METADATA_KEY]
    assert meta == {"limit": 65536, "reason": "backlog_limit set on the aspect"}


def test_launch_template_without_any_known_type_runs_auto_at_boot():
    app, stack, _ = new_stack()
    ec2.LaunchTemplate(stack, "LT", machine_image=IMAGE, user_data=ec2.UserData.for_linux())
    AuditBacklog.apply_to(app)
    lt = only(stack, "AWS::EC2::LaunchTemplate")
    assert cab_target(user_data_of(lt)) == "auto"
    assert lt["Metadata"][METADATA_KEY]["limit"] == "auto"


def test_unknown_instance_type_resolves_to_auto_never_a_guess():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("zz9.plural"), machine_image=IMAGE)
    AuditBacklog.apply_to(app)
    meta = only(stack, "AWS::EC2::Instance")["Metadata"][METADATA_KEY]
    assert (
        meta["limit"] == "auto"
        and "memoryMiB" not in meta
        and "instanceType" not in meta
        and "zz9.plural" in meta["reason"]
    )


def test_asg_with_launch_configuration_is_tuned():
    app, stack, vpc = new_stack(
        flags={"@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": False}
    )
    asg = autoscaling.AutoScalingGroup(
        stack, "G", vpc=vpc, instance_type=ec2.InstanceType("m5.xlarge"), machine_image=IMAGE
    )
    asg.add_user_data("echo from-asg")
    AuditBacklog.apply_to(app)
    lc = only(stack, "AWS::AutoScaling::LaunchConfiguration")
    text = user_data_of(lc)
    assert cab_target(text) == "16384"
    assert strip_block(text) == "#!/bin/bash\necho from-asg"


def test_asg_with_generated_launch_template_is_tuned():
    app, stack, vpc = new_stack(
        flags={"@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": True}
    )
    autoscaling.AutoScalingGroup(
        stack, "G", vpc=vpc, instance_type=ec2.InstanceType("t3.large"), machine_image=IMAGE
    )
    AuditBacklog.apply_to(app)
    assert cab_target(user_data_of(only(stack, "AWS::EC2::LaunchTemplate"))) == "8192"


def test_several_aspects_tune_once_and_the_nearest_wins():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    Aspects.of(app).add(AuditBacklog())
    Aspects.of(app).add(AuditBacklog())
    Aspects.of(stack).add(AuditBacklog(backlog_limit=4096))
    res = only(stack, "AWS::EC2::Instance")
    assert cab_target(user_data_of(res)) == "4096"
    assert res["Metadata"][METADATA_KEY]["reason"] == "backlog_limit set on the aspect"


def test_nearest_wins_whatever_the_order_of_adding():
    app, stack, vpc = new_stack()
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    Aspects.of(inst).add(AuditBacklog(backlog_limit=2048))
    Aspects.of(app).add(AuditBacklog(backlog_limit=999))
    assert cab_target(user_data_of(only(stack, "AWS::EC2::Instance"))) == "2048"


def test_synthesizing_twice_gives_the_same_template():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    AuditBacklog.apply_to(app)
    first = assertions.Template.from_stack(stack).to_json()
    second = assertions.Template.from_stack(stack).to_json()
    assert first == second
    instance = next(r for r in first["Resources"].values() if r["Type"] == "AWS::EC2::Instance")
    assert user_data_of(instance).count(BEGIN) == 1


def test_user_data_over_16_kib_fails_synth_naming_resource_and_size():
    app, stack, vpc = new_stack()
    inst = ec2.Instance(
        stack, "Big", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE
    )
    inst.user_data.add_commands("echo " + "x" * 16000)  # fits alone, not with the block
    AuditBacklog.apply_to(app)
    with pytest.raises(Exception) as err:
        app.synth()
    message = str(err.value)
    assert "S/Big/Resource" in message and "16384" in message
    assert "bytes" in message


def test_skip_leaves_user_data_byte_for_byte_and_says_why():
    app, stack, vpc = new_stack()
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    inst.user_data.add_commands("echo mine")
    AuditBacklog.skip(inst, "appliance image manages auditd itself")
    AuditBacklog.apply_to(app)
    res = only(stack, "AWS::EC2::Instance")
    assert user_data_of(res) == "#!/bin/bash\necho mine"
    assert "appliance image" in res["Metadata"][METADATA_KEY]["skipped"]


def test_windows_instance_is_skipped_with_a_warning():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "Win", vpc=vpc, instance_type=ec2.InstanceType("t3.large"),
                 machine_image=ec2.MachineImage.generic_windows({"us-east-1": "ami-87654321"}))
    AuditBacklog.apply_to(app)
    res = only(stack, "AWS::EC2::Instance")
    assert "Windows" in res["Metadata"][METADATA_KEY]["skipped"]
    assert user_data_of(res) == "<powershell></powershell>"
    warnings = assertions.Annotations.from_stack(stack).find_warning(
        "/S/Win/Resource", assertions.Match.string_like_regexp("S/Win/Resource is not tuned: Windows"))
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backlog_limit": 0}, "backlog_limit must be an integer from 1 to 2147483647"),
        ({"backlog_limit": True}, "backlog_limit"),
        ({"backlog_limit": 8192.0}, "backlog_limit"),
        ({"backlog_wait_time": 60001}, "backlog_wait_time must be an integer from 0 to 60000"),
        ({"kernel_cmdline": "yes"}, "kernel_cmdline must be True or False"),
        ({"policy": {"memory_fraction": 0.02}}, "policy must be a BacklogPolicy"),
        ({"exclude": "web"}, "exclude must be a callable"),
        ({"boot_unit": "auto"}, "boot_unit must be True or False"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AuditBacklog(**kwargs)


def test_user_script_with_set_e_and_exit_0_still_runs_after_the_block(tmp_path):
    app, stack, vpc = new_stack()
    inst = ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=IMAGE)
    marker = tmp_path / "ran"
    inst.user_data.add_commands("set -e", f"echo first >> {marker}", f"echo second >> {marker}", "exit 0")
    AuditBacklog.apply_to(app)
    text = user_data_of(only(stack, "AWS::EC2::Instance"))
    (tmp_path / "proc").mkdir()
    env = dict(os.environ, CAB_ROOT=str(tmp_path), PATH="/usr/bin:/bin")
    result = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "first\nsecond\n"
    assert "cdk-audit-backlog: " in result.stdout


def test_policy_option_changes_the_choice():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE)
    AuditBacklog.apply_to(app, policy=BacklogPolicy(memory_fraction=0.04))
    assert cab_target(user_data_of(only(stack, "AWS::EC2::Instance"))) == "32768"


def test_eks_node_group_with_types_of_different_limits_runs_auto_in_its_mime_part():
    from aws_cdk import aws_eks as eks

    app, stack, _ = new_stack()
    lt = ec2.CfnLaunchTemplate(
        stack,
        "NodeLt",
        launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
            user_data=cdk.Fn.base64(
                'Content-Type: multipart/mixed; boundary="//"\nMIME-Version: 1.0\n\n--//\n'
                'Content-Type: text/x-shellscript; charset="us-ascii"\n\n#!/bin/bash\necho node\n--//--\n'
            )
        ),
    )
    eks.CfnNodegroup(
        stack,
        "Nodes",
        cluster_name="c",
        node_role="arn:aws:iam::123456789012:role/n",
        subnets=["subnet-1"],
        instance_types=["m5.large", "r5.4xlarge"],
        launch_template=eks.CfnNodegroup.LaunchTemplateSpecificationProperty(
            id=lt.ref, version=lt.attr_latest_version_number
        ),
    )
    AuditBacklog.apply_to(app)
    lt_res = only(stack, "AWS::EC2::LaunchTemplate")
    meta = lt_res["Metadata"][METADATA_KEY]
    assert meta["limit"] == "auto" and meta["perType"] == {"m5.large": 8192, "r5.4xlarge": 131072}
    from cdk_audit_backlog.testing import launches

    (launch,) = launches(assertions.Template.from_stack(stack))
    assert launch.tuning.is_mixed and launch.user_data.startswith("Content-Type: multipart/mixed")

def block_settings(text: str) -> dict:
    block = text[text.index(BEGIN) : text.index(END)]
    return dict(line.split("=", 1) for line in block.splitlines() if line.startswith("CAB_"))


def test_boot_unit_is_on_by_default_following_memory_unless_the_user_fixed_the_limit():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "Typed", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE)
    ec2.LaunchTemplate(stack, "Untyped", machine_image=IMAGE, user_data=ec2.UserData.for_linux())
    AuditBacklog.apply_to(app)
    typed = user_data_of(only(stack, "AWS::EC2::Instance"))
    # the limit chosen from the type is what this boot applies; every later boot recomputes it from MemTotal
    assert block_settings(typed)["CAB_TARGET"] == "8192" and block_settings(typed)["CAB_UNIT"] == "auto"
    assert "cab_limit_for_kib" in typed  # the formula rides along for the unit
    untyped = user_data_of(only(stack, "AWS::EC2::LaunchTemplate"))
    assert block_settings(untyped)["CAB_TARGET"] == "auto" and block_settings(untyped)["CAB_UNIT"] == "auto"

    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE)
    AuditBacklog.apply_to(app, backlog_limit=65536)
    fixed = user_data_of(only(stack, "AWS::EC2::Instance"))
    assert block_settings(fixed)["CAB_TARGET"] == "65536" and block_settings(fixed)["CAB_UNIT"] == "fixed"


def test_boot_unit_false_renders_the_block_without_the_unit():
    app, stack, vpc = new_stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE)
    AuditBacklog.apply_to(app, boot_unit=False)
    text = user_data_of(only(stack, "AWS::EC2::Instance"))
    assert (
        "CAB_UNIT" not in block_settings(text) and "cab_unit" not in text and "cab_limit_for_kib" not in text
    )
    assert "/bin/bash -s <<'CDK_AUDIT_BACKLOG' || true" in text
