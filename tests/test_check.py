"""AuditBacklogCheck: loud on untuned / doubly tuned / under-tuned launches, silent once tuned.

Tiny stacks built here, with hand-written user data holding a block from ``user_data.render_block`` (or
none); then the same check as a CDK validation plugin in real synthesis, with Stages, nested stacks,
acknowledgments, the AuditBacklog aspect, and beside cdk-nag in ``tests/apps/nag_app.py``.
"""

import importlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from aws_cdk import Acknowledgment, App, Fn, NestedStack, Stack, Stage, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.check import PLUGIN_NAME, RULES, AuditBacklogCheck, Finding
from cdk_audit_backlog.policy import BacklogPolicy
from cdk_audit_backlog.user_data import BlockInputs, render_block

REPO = Path(__file__).resolve().parents[1]
IMAGE = ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"})
POLICY = BacklogPolicy()


def block(target: Optional[int], source: str = "unknown", policy: BacklogPolicy = POLICY) -> str:
    return render_block(BlockInputs(target=target, source=source, policy=policy))


def script(*blocks: str) -> ec2.UserData:
    return ec2.UserData.custom("#!/bin/bash\n" + "".join(blocks) + "echo 'user line'\n")


def _stack() -> Stack:
    return Stack(App(builtin_cloud_formation_validation=False), "S")


def _vpc(stack: Stack) -> ec2.Vpc:
    return ec2.Vpc(
        stack,
        "Vpc",
        nat_gateways=0,
        max_azs=1,
        subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
    )


def instance_stack(instance_type: str, user_data: Optional[ec2.UserData]) -> Stack:
    stack = _stack()
    ec2.CfnInstance(
        stack,
        "Web",
        instance_type=instance_type,
        image_id="ami-0123456789abcdef0",
        user_data=None if user_data is None else Fn.base64(user_data.render()),
    )
    return stack


def findings(stack: Stack, check: Optional[AuditBacklogCheck] = None) -> List[Finding]:
    return (check or AuditBacklogCheck()).check_template(Template.from_stack(stack))


def rules(stack: Stack, check: Optional[AuditBacklogCheck] = None) -> List[str]:
    return [f.rule for f in findings(stack, check)]


# -- one launch, hand-written user data -----------------------------------------------------------


def test_instance_without_a_block_is_untuned():
    found = findings(instance_stack("m5.large", script()))
    assert [(f.rule, f.logical_id) for f in found] == [("Untuned", "Web")]
    assert "has no cdk-audit-backlog block" in found[0].message


def test_instance_without_any_user_data_is_untuned():
    assert rules(instance_stack("m5.large", None)) == ["Untuned"]


def test_instance_tuned_to_the_policy_limit_is_silent():
    limit = POLICY.limit_for_memory(8192)
    assert rules(instance_stack("m5.large", script(block(limit, "m5.large/8192MiB")))) == []


def test_instance_tuned_above_the_policy_is_silent_and_below_is_loud():
    assert rules(instance_stack("m5.large", script(block(65536)))) == []
    found = findings(instance_stack("m5.large", script(block(4096))))
    assert [(f.rule, f.required, f.found) for f in found] == [("BelowPolicy", 8192, 4096)]
    assert "m5.large" in found[0].message


def test_instance_tuned_twice_is_reported():
    found = findings(instance_stack("m5.large", script(block(8192), block(8192))))
    assert [f.rule for f in found] == ["TunedMoreThanOnce"]
    assert "2 blocks" in found[0].message


def test_auto_is_right_for_any_instance_type():
    assert rules(instance_stack("m5.large", script(block(None)))) == []
    assert rules(instance_stack("no-such.type", script(block(None)))) == []


def test_auto_with_a_weaker_policy_than_the_check_is_below_policy():
    weak = BacklogPolicy(memory_fraction=0.001, minimum=64)
    found = findings(instance_stack("m5.large", script(block(None, policy=weak))))
    assert [f.rule for f in found] == ["BelowPolicy"]
    assert (
        "CAB_FRACTION_PPM=1000 (policy 10000)" in found[0].message
        and "CAB_MIN=64 (policy 320)" in found[0].message
    )
    # The same block meets a check configured with that weaker policy.
    assert (
        rules(instance_stack("m5.large", script(block(None, policy=weak))), AuditBacklogCheck(policy=weak))
        == []
    )


def test_unknown_instance_type_needs_auto_or_the_policy_maximum():
    found = findings(instance_stack("zz9.enormous", script(block(8192))))
    assert [(f.rule, f.required, f.found) for f in found] == [("BelowPolicy", None, 8192)]
    assert rules(instance_stack("zz9.enormous", script(block(POLICY.maximum)))) == []


def test_a_block_after_the_users_lines_is_not_first():
    late = ec2.UserData.custom("#!/bin/bash\nset -e\ncurl -f http://config/ || exit 0\n" + block(8192))
    assert rules(instance_stack("m5.large", late)) == ["BlockNotFirst"]
    no_shebang = ec2.UserData.custom(block(8192) + "echo hi\n")
    assert rules(instance_stack("m5.large", no_shebang)) == ["BlockNotFirst"]


def test_a_block_with_an_unreadable_target_is_malformed():
    text = block(8192).replace("CAB_TARGET=8192", "CAB_TARGET=plenty")
    assert rules(instance_stack("m5.large", script(text))) == ["MalformedBlock"]


def test_the_check_uses_its_policy_and_memory_table():
    strict = AuditBacklogCheck(policy=BacklogPolicy(memory_fraction=0.04), memory_of={"m5.large": 8192}.get)
    found = findings(instance_stack("m5.large", script(block(8192))), strict)
    assert [(f.rule, f.required) for f in found] == [("BelowPolicy", 32768)]


@pytest.mark.parametrize(
    "text",
    [
        "<powershell>\nWrite-Host hi\n</powershell>\n",
        "<script>\necho hi\n</script>",
        "version: 1.0\ntasks:\n- task: executeScript\n",
        '[settings.kubernetes]\ncluster-name = "demo"\n',
        '# Bottlerocket\n[settings.host-containers.admin]\nenabled = true\n',
    ],
)
def test_windows_and_bottlerocket_user_data_are_not_violations(text):
    assert rules(instance_stack("m5.large", ec2.UserData.custom(text))) == []


def test_windows_l2_user_data_is_not_a_violation():
    stack = _stack()
    ec2.Instance(
        stack,
        "Win",
        vpc=_vpc(stack),
        instance_type=ec2.InstanceType("m5.large"),
        machine_image=ec2.MachineImage.generic_windows({"us-east-1": "ami-0123456789abcdef0"}),
    )
    assert rules(stack) == []


def test_cloud_config_without_a_block_is_untuned():
    assert rules(instance_stack("m5.large", ec2.UserData.custom("#cloud-config\nruncmd: [ls]\n"))) == [
        "Untuned"
    ]


def test_linux_user_data_mentioning_windows_tags_is_still_checked():
    page = (
        "#cloud-config\nwrite_files:\n- path: /var/www/index.html\n  content: '<script>alert(1)</script>'\n"
    )
    assert rules(instance_stack("m5.large", ec2.UserData.custom(page))) == ["Untuned"]
    assert rules(instance_stack("m5.large", ec2.UserData.custom("#!/bin/sh\necho '<powershell>'\n"))) == [
        "Untuned"
    ]


def test_a_launch_the_user_opted_out_is_not_a_violation():
    stack = instance_stack("m5.large", script())
    web = stack.node.find_child("Web")
    web.add_metadata("cdk-audit-backlog", {"skipped": "excluded with AuditBacklog.skip(): legacy fleet"})
    assert rules(stack) == []


# -- launch templates and their groups ------------------------------------------------------------


def mixed_stack(lt_type: Optional[str], overrides: List[Optional[str]], user_data: ec2.UserData) -> Stack:
    stack = _stack()
    template = ec2.LaunchTemplate(
        stack,
        "Lt",
        machine_image=IMAGE,
        user_data=user_data,
        instance_type=None if lt_type is None else ec2.InstanceType(lt_type),
    )
    autoscaling.AutoScalingGroup(
        stack,
        "Asg",
        vpc=_vpc(stack),
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=template,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                if t is not None
                else autoscaling.LaunchTemplateOverrides(
                    instance_requirements=autoscaling.CfnAutoScalingGroup.InstanceRequirementsProperty(
                        memory_mib=autoscaling.CfnAutoScalingGroup.MemoryMiBRequestProperty(min=2048),
                        v_cpu_count=autoscaling.CfnAutoScalingGroup.VCpuCountRequestProperty(min=2),
                    )
                )
                for t in overrides
            ],
        ),
    )
    return stack


def test_mixed_instances_need_auto_or_the_limit_of_the_largest_type():
    # t3.micro has 1 GiB (1024), m5.xlarge 16 GiB (16384): each machine must meet the policy for its own
    # type, so the smallest type's 1024 leaves the m5.xlarge machines below it.
    found = findings(mixed_stack(None, ["m5.xlarge", "t3.micro"], script(block(1024))))
    assert [(f.rule, f.required, f.found) for f in found] == [("BelowPolicy", 16384, 1024)]
    assert "m5.xlarge" in found[0].message and "t3.micro" in found[0].message and "auto" in found[0].message
    assert rules(mixed_stack(None, ["m5.xlarge", "t3.micro"], script(block(16384)))) == []
    # auto (what the aspect writes for such a group) passes: each machine computes its own limit.
    assert rules(mixed_stack(None, ["m5.xlarge", "t3.micro"], script(block(None, source="mixed")))) == []


def test_auto_on_a_mixed_group_needs_a_policy_at_least_as_strong():
    weak = BacklogPolicy(memory_fraction=0.005)
    found = findings(mixed_stack(None, ["m5.large", "r5.4xlarge"], script(block(None, "mixed", policy=weak))))
    assert [(f.rule, f.found) for f in found] == [("BelowPolicy", "auto")]
    assert "CAB_FRACTION_PPM=5000 (policy 10000)" in found[0].message
    strong = BacklogPolicy(memory_fraction=0.02, minimum=1024, maximum=1 << 20)
    assert (
        rules(mixed_stack(None, ["m5.large", "r5.4xlarge"], script(block(None, "mixed", policy=strong))))
        == []
    )


def test_types_that_share_one_limit_keep_a_fixed_limit():
    # t3.large and m5.large both have 8 GiB: one limit, 8192, fits both.
    assert rules(mixed_stack(None, ["t3.large", "m5.large"], script(block(8192)))) == []
    assert rules(mixed_stack(None, ["t3.large", "m5.large"], script(block(4096)))) == ["BelowPolicy"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 8192.0, True, "8192", 10**100, -1])
def test_memory_of_returning_a_bad_number_names_memory_of(bad):
    check = AuditBacklogCheck(memory_of=lambda t: bad)
    with pytest.raises(
        ValueError, match=r"memory_of\('m5.large'\) must return None or a whole number of MiB"
    ):
        findings(instance_stack("m5.large", script(block(8192))), check)


def test_memory_of_may_return_any_integer_type():
    import numpy as np  # requirements-dev.txt (tests only)
    check = AuditBacklogCheck(memory_of=lambda t: np.int64(8192))
    assert rules(instance_stack("m5.large", script(block(8192))), check) == []
    assert [f.required for f in findings(instance_stack("m5.large", script(block(4096))), check)] == [8192]


def test_overrides_replace_the_launch_template_type():
    # EC2 launches the override types, not the template's r5.4xlarge (128 GiB): 1024 is enough.
    assert rules(mixed_stack("r5.4xlarge", ["t3.micro"], script(block(1024)))) == []
    assert [f.required for f in findings(mixed_stack("t3.micro", ["m5.xlarge"], script(block(1024))))] == [
        16384
    ]


def test_attribute_based_instance_selection_needs_auto():
    assert rules(mixed_stack(None, [None], script(block(None)))) == []
    assert rules(mixed_stack(None, [None], script(block(8192)))) == ["BelowPolicy"]


def test_launch_template_with_its_own_type_and_a_plain_group():
    stack = _stack()
    template = ec2.LaunchTemplate(
        stack,
        "Lt",
        machine_image=IMAGE,
        instance_type=ec2.InstanceType("m5.xlarge"),
        user_data=script(block(8192)),
    )
    autoscaling.AutoScalingGroup(stack, "Asg", vpc=_vpc(stack), launch_template=template)
    found = findings(stack)
    assert [(f.rule, f.resource_type, f.required) for f in found] == [
        ("BelowPolicy", "AWS::EC2::LaunchTemplate", 16384)
    ]


def test_launch_template_without_user_data_is_untuned():
    stack = _stack()
    ec2.LaunchTemplate(stack, "Lt", instance_type=ec2.InstanceType("m5.large"))
    found = findings(stack)
    assert [(f.rule, f.resource_type) for f in found] == [("Untuned", "AWS::EC2::LaunchTemplate")]
    assert "It has no user data." == found[0].message


def _instance_from_template(instance_type: Optional[str]) -> Stack:
    stack = _stack()
    lt = ec2.CfnLaunchTemplate(
        stack,
        "Lt",
        launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
            instance_type="m5.large", user_data=Fn.base64("#!/bin/bash\n" + block(4096))
        ),
    )
    ec2.CfnInstance(
        stack,
        "FromLt",
        instance_type=instance_type,
        launch_template=ec2.CfnInstance.LaunchTemplateSpecificationProperty(
            launch_template_id=lt.ref, version="1"
        ),
    )
    return stack


def test_an_instance_launched_from_a_template_is_checked_through_the_template():
    # The instance has no user data of its own: the template's block applies, found below m5.large's 8192.
    assert [(f.rule, f.logical_id, f.required) for f in findings(_instance_from_template(None))] == [
        ("BelowPolicy", "Lt", 8192)
    ]
    # The instance's own type wins over the template's: m5.xlarge needs 16384.
    assert [(f.rule, f.logical_id, f.required) for f in findings(_instance_from_template("m5.xlarge"))] == [
        ("BelowPolicy", "Lt", 16384)
    ]


def test_launch_configuration_of_an_asg_is_checked():
    stack = _stack()
    autoscaling.AutoScalingGroup(
        stack,
        "Asg",
        vpc=_vpc(stack),
        instance_type=ec2.InstanceType("m5.large"),
        machine_image=IMAGE,
        user_data=script(block(2048)),
    )
    found = findings(stack)
    assert [(f.rule, f.resource_type, f.required, f.found) for f in found] == [
        ("BelowPolicy", "AWS::AutoScaling::LaunchConfiguration", 8192, 2048)
    ]


@settings(max_examples=80, deadline=None)
@given(
    memory=st.dictionaries(
        st.sampled_from([f"f{i}.large" for i in range(8)]), st.integers(1, 4_000_000), max_size=8
    ),
    overrides=st.lists(st.sampled_from([f"f{i}.large" for i in range(8)]), min_size=1, max_size=4),
    target=st.one_of(st.none(), st.integers(1, 2**20)),
)
def test_required_limit_is_the_largest_policy_limit_among_the_overrides(memory, overrides, target):
    template = {
        "Resources": {
            "Lt": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {
                    "LaunchTemplateData": {"UserData": {"Fn::Base64": "#!/bin/bash\n" + block(target)}}
                },
            },
            "Asg": {
                "Type": "AWS::AutoScaling::AutoScalingGroup",
                "Properties": {
                    "MixedInstancesPolicy": {
                        "LaunchTemplate": {
                            "LaunchTemplateSpecification": {
                                "LaunchTemplateId": {"Ref": "Lt"},
                                "Version": "1",
                            },
                            "Overrides": [{"InstanceType": t} for t in overrides],
                        }
                    }
                },
            },
        }
    }
    found = AuditBacklogCheck(memory_of=memory.get).check_template(template)
    if target is None:
        assert found == []
    elif all(t in memory for t in overrides):
        required = max(POLICY.limit_for_memory(memory[t]) for t in overrides)  # each machine meets its own
        assert [(f.rule, f.required) for f in found] == (
            [("BelowPolicy", required)] if target < required else []
        )
    else:  # a type without known memory: only auto or the policy maximum is sure to be enough
        assert [f.rule for f in found] == (["BelowPolicy"] if target < POLICY.maximum else [])


# -- as a CDK validation plugin -------------------------------------------------------------------


def _report(outdir: Path) -> dict:
    """Our plugin's part of CDK's validation report (absent when it found nothing)."""
    report = json.loads((outdir / "validation-report.json").read_text())
    ours = [r for r in report["pluginReports"] if r["pluginName"] == PLUGIN_NAME]
    return ours[0] if ours else {"conclusion": "success", "violations": []}


def _violations(outdir: Path):
    return sorted(
        (v["ruleName"], c["constructPath"])
        for v in _report(outdir)["violations"]
        for c in v["violatingConstructs"]
    )


def _app_with_launches(outdir: Path):
    app = App(builtin_cloud_formation_validation=False, outdir=str(outdir))
    stack = Stack(app, "Plain")
    vpc = _vpc(stack)
    user_data = ec2.UserData.for_linux()
    user_data.add_commands("echo hello")
    ec2.Instance(
        stack,
        "Web",
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
        machine_image=IMAGE,
        user_data=user_data,
    )
    template = ec2.LaunchTemplate(stack, "Lt", machine_image=IMAGE)
    autoscaling.AutoScalingGroup(
        stack,
        "Asg",
        vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=template,
            launch_template_overrides=[autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.large"))],
        ),
    )
    stage = Stage(app, "Prod")
    staged = Stack(stage, "Service")
    ec2.CfnInstance(staged, "Box", instance_type="c5.large", image_id="ami-0123456789abcdef0")
    return app, stack


def test_plugin_fails_synth_before_the_aspect_and_passes_after(tmp_path):
    app, _ = _app_with_launches(tmp_path / "before")
    check = AuditBacklogCheck()
    Validations.of(app).add_plugins(check)
    with pytest.raises(Exception, match="ValidationFailed") as raised:
        app.synth()
    assert "CdkAuditBacklog::Untuned" in str(raised.value)
    assert _violations(tmp_path / "before") == [
        ("Untuned", "Plain/Lt/Resource"),
        ("Untuned", "Plain/Web/Resource"),
        ("Untuned", "Prod/Service/Box"),  # a plugin on the app sees the stacks inside Stages
    ]

    app, _ = _app_with_launches(tmp_path / "after")
    check = AuditBacklogCheck()
    Validations.of(app).add_plugins(check)
    AuditBacklog.apply_to(app)
    app.synth()
    assert _violations(tmp_path / "after") == []
    assert len(check.last_checked) == 3 and check.last_findings == []


def test_acknowledgment_silences_exactly_the_acknowledged_resource(tmp_path):
    app, stack = _app_with_launches(tmp_path)
    Validations.of(app).add_plugins(AuditBacklogCheck())
    Validations.of(stack.node.find_child("Web")).acknowledge(
        Acknowledgment(id=f"{PLUGIN_NAME}::Untuned", reason="this host runs no auditd")
    )
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()
    assert _violations(tmp_path) == [("Untuned", "Plain/Lt/Resource"), ("Untuned", "Prod/Service/Box")]
    suppressed = _report(tmp_path).get("suppressedViolations", [])
    assert [(s["ruleName"], s["reason"]) for s in suppressed] == [("Untuned", "this host runs no auditd")]


def test_plugin_follows_nested_stacks(tmp_path):
    app = App(builtin_cloud_formation_validation=False, outdir=str(tmp_path))
    parent = Stack(app, "Parent")
    nested = NestedStack(parent, "Inner")
    ec2.CfnInstance(nested, "Deep", instance_type="m5.large", image_id="ami-0123456789abcdef0")
    check = AuditBacklogCheck()
    Validations.of(app).add_plugins(check)
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()
    assert [(f.rule, f.logical_id) for f in check.last_findings] == [("Untuned", "Deep")]
    assert check.last_findings[0].template_path.endswith(".nested.template.json")
    # CDK maps the nested template's logical id back to the construct, so acknowledgments work there too.
    assert _violations(tmp_path) == [("Untuned", "Parent/Inner/Deep")]


def test_report_only_mode_lists_warnings_and_lets_synth_succeed(tmp_path):
    app, _ = _app_with_launches(tmp_path)
    check = AuditBacklogCheck(fail_synth=False)
    Validations.of(app).add_plugins(check)
    app.synth()
    report = _report(tmp_path)
    assert report["conclusion"] == "success"
    assert {v["severity"] for v in report["violations"]} == {"warning"}
    assert len(report["violations"]) == len(check.last_findings) == 3
    with pytest.raises(ValueError, match="fail_synth"):
        AuditBacklogCheck(fail_synth="no")  # type: ignore[arg-type]


def test_plugin_names_and_rules():
    check = AuditBacklogCheck()
    assert check.name == PLUGIN_NAME
    assert (
        check.rule_ids
        == list(RULES)
        == [
            "Untuned",
            "TunedMoreThanOnce",
            "BelowPolicy",
            "MalformedBlock",
            "BlockNotFirst",
            "BelowComplianceFloor",
        ]
    )
    with pytest.raises(ValueError, match="policy"):
        AuditBacklogCheck(policy=0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_of"):
        AuditBacklogCheck(memory_of={"m5.large": 8192})  # type: ignore[arg-type]


# -- beside cdk-nag -------------------------------------------------------------------------------


def _nag_app():
    spec = importlib.util.spec_from_file_location("nag_app", REPO / "tests" / "apps" / "nag_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nag_app_reports_both_plugins_and_passes_once_tuned(tmp_path):
    nag_app = _nag_app()
    with pytest.raises(Exception, match="ValidationFailed"):
        nag_app.build(tune=False, outdir=str(tmp_path / "untuned")).synth()
    report = json.loads((tmp_path / "untuned" / "validation-report.json").read_text())
    by_plugin = {r["pluginName"]: r for r in report["pluginReports"]}
    assert set(by_plugin) == {"AwsSolutions", PLUGIN_NAME}
    nag_suppressed = {
        f"AwsSolutions::{s['ruleName']}" for s in by_plugin["AwsSolutions"]["suppressedViolations"]
    }
    assert nag_suppressed == set(nag_app.NAG_ACKNOWLEDGED)
    assert by_plugin["AwsSolutions"]["conclusion"] == "success"
    assert sorted(v["ruleName"] for v in by_plugin[PLUGIN_NAME]["violations"]) == ["Untuned", "Untuned"]

    nag_app.build(tune=True, outdir=str(tmp_path / "tuned")).synth()
    assert _violations(tmp_path / "tuned") == []


@pytest.mark.cli
@pytest.mark.parametrize("tune", ["0", "1"])
def test_real_cdk_cli_synth_of_the_nag_app_fails_untuned_and_passes_tuned(tune, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # as a user runs it
    env.update(PATH=str(REPO / ".venv" / "bin") + os.pathsep + env["PATH"], NAG_APP_TUNE=tune)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--app", "python3 tests/apps/nag_app.py",
         "--no-notices", "--quiet", "-o", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    output = done.stdout + done.stderr
    if tune == "0":
        assert done.returncode != 0, output
        assert output.count("Acknowledge with 'CdkAuditBacklog::Untuned'") == 2, output
        assert "NagDemo/Web/Resource" in output and "NagDemo/WorkerTemplate/Resource" in output
    else:
        assert done.returncode == 0, output
        assert "CdkAuditBacklog" not in output


# -- agreement with the mutating aspect -----------------------------------------------------------


def _zoo(tuned: bool, extra=None) -> Stack:
    """Many kinds of launch in one stack: L2 and L1, known / unknown / token types, Windows, tokens."""
    from aws_cdk import CfnParameter

    stack = _stack()
    vpc = _vpc(stack)
    linux = ec2.UserData.for_linux()
    linux.add_commands("echo one")
    ec2.Instance(
        stack,
        "L2Instance",
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
        machine_image=IMAGE,
        user_data=linux,
    )
    ec2.Instance(
        stack,
        "WindowsBox",
        vpc=vpc,
        instance_type=ec2.InstanceType("m5.large"),
        machine_image=ec2.MachineImage.generic_windows({"us-east-1": "ami-0123456789abcdef0"}),
    )
    ec2.LaunchTemplate(stack, "BareTemplate")
    ec2.CfnInstance(
        stack,
        "RawLiteral",
        instance_type="c5.2xlarge",
        image_id="ami-1",
        user_data=Fn.base64("#!/bin/sh\necho raw\n"),
    )
    queue_ref = CfnParameter(stack, "Greeting", default="hi")
    ec2.CfnInstance(
        stack,
        "RawJoin",
        instance_type="zz9.unknown",
        image_id="ami-1",
        user_data=Fn.base64(Fn.join("", ["#!/bin/bash\necho ", queue_ref.value_as_string, "\n"])),
    )
    type_param = CfnParameter(stack, "TypeParam", default="m5.large")
    ec2.CfnInstance(stack, "TokenType", instance_type=type_param.value_as_string, image_id="ami-1")
    ud_param = CfnParameter(stack, "UserDataParam", default="")
    ec2.CfnInstance(
        stack,
        "OpaqueUserData",
        instance_type="m5.large",
        image_id="ami-1",
        user_data=ud_param.value_as_string,
    )
    autoscaling.AutoScalingGroup(
        stack, "Lc", vpc=vpc, instance_type=ec2.InstanceType("r5.large"), machine_image=IMAGE
    )
    lt = ec2.LaunchTemplate(stack, "MixedTemplate", machine_image=IMAGE)
    autoscaling.AutoScalingGroup(
        stack,
        "Mixed",
        vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.xlarge")),
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("t3.small")),
            ],
        ),
    )
    if extra:
        extra(stack, vpc)
    if tuned:
        AuditBacklog.apply_to(stack.node.root)
    return stack


def test_check_is_loud_on_every_linux_launch_before_the_aspect_and_silent_after():
    before = findings(_zoo(tuned=False))
    assert sorted((f.rule, f.logical_id.rstrip("0123456789ABCDEF")) for f in before) == sorted(
        [
            ("Untuned", "L2Instance"),
            ("Untuned", "BareTemplate"),
            ("Untuned", "RawLiteral"),
            ("Untuned", "RawJoin"),
            ("Untuned", "TokenType"),
            ("Untuned", "OpaqueUserData"),  # a token the check cannot see into: loud until acknowledged
            ("Untuned", "LcLaunchConfig"),
            ("Untuned", "MixedTemplate"),
        ]
    )
    tuned = _zoo(tuned=True)
    assert findings(tuned) == []
    # The aspect skipped (and warned about) the user data it cannot see into; the check honours that.
    from cdk_audit_backlog.testing import launches

    skipped = {launch.logical_id for launch in launches(Template.from_stack(tuned)) if launch.skipped}
    assert "OpaqueUserData" in skipped


def test_aspect_and_check_agree_when_overrides_replace_the_template_type():
    def extra(stack, vpc):
        lt = ec2.LaunchTemplate(
            stack, "TypedTemplate", machine_image=IMAGE, instance_type=ec2.InstanceType("t3.micro")
        )
        autoscaling.AutoScalingGroup(
            stack,
            "TypedMixed",
            vpc=vpc,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=lt,
                launch_template_overrides=[autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.xlarge"))],
            ),
        )

    assert findings(_zoo(tuned=True, extra=extra)) == []


# -- the realistic apps of tests/apps/ ------------------------------------------------------------

REALISTIC_APPS = ["mixed_instances", "ecs", "eks", "user_data_kinds", "l1_raw", "stages"]


def _synth_checked(name: str, tuned: bool, outdir: Path) -> AuditBacklogCheck:
    module = importlib.import_module(f"tests.apps.{name}")
    app = App(builtin_cloud_formation_validation=False, outdir=str(outdir))
    module.build(app)
    check = AuditBacklogCheck()
    Validations.of(app).add_plugins(check)
    if tuned:
        AuditBacklog.apply_to(app)
    try:
        app.synth()
    except Exception as e:  # the report is read from the plugin below
        if "ValidationFailed" not in str(e):
            raise
    return check


@pytest.mark.parametrize("name", REALISTIC_APPS)
def test_check_on_the_realistic_apps_is_loud_before_and_silent_after_the_aspect(name, tmp_path):
    before = _synth_checked(name, tuned=False, outdir=tmp_path / "before")
    assert before.last_findings, f"{name}: untuned app raised no finding"
    assert {f.rule for f in before.last_findings} == {"Untuned"}
    after = _synth_checked(name, tuned=True, outdir=tmp_path / "after")
    assert after.last_checked == before.last_checked
    assert after.last_findings == [], [f.message for f in after.last_findings]


def test_a_running_instance_whose_user_data_was_kept_is_fine_only_with_an_association():
    from aws_cdk import aws_ssm as ssm

    kept = {"limit": 8192, "deployed": "user data kept; tuned by the association"}
    for association in (False, True):
        stack = instance_stack("m5.large", script())
        stack.node.find_child("Web").add_metadata("cdk-audit-backlog", kept)
        if association:
            ssm.CfnAssociation(stack, "Tune", name="Doc")
            assert rules(stack) == []
        else:
            found = findings(stack)
            assert [f.rule for f in found] == ["Untuned"] and "no AWS::SSM::Association" in found[0].message
