"""Compliance presets: the STIG / CIS floor of 8192 with memory-aware sizing above it, named in check mode."""

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk import aws_ec2 as ec2

from cdk_audit_backlog import AuditBacklog, BacklogPolicy, TuningOptions
from cdk_audit_backlog.check import AuditBacklogCheck
from cdk_audit_backlog.testing import block_settings, launches
from cdk_audit_backlog.user_data import BlockInputs, render_block
from tests.boot import fixtures as fx

PREFIX = "cdk-audit-backlog: "
# Type -> (the preset's -b in the rules, the policy's alone): the floor lifts the small ones, the large keep
# theirs.
FIGURES = {
    "t3.nano": (8192, 512),
    "t3.micro": (8192, 1024),
    "m5.large": (8192, 8192),
    "c5.2xlarge": (16384, 16384),
    "r5.4xlarge": (131072, 131072),
    "r5.24xlarge": (262144, 262144),
}


def _app(compliance, types=FIGURES):
    app = cdk.App()
    stack = cdk.Stack(app, "Hardened", env=cdk.Environment(account="111111111111", region="us-east-1"))
    for i, instance_type in enumerate(types):
        ec2.CfnInstance(
            stack, f"I{i}", image_id="ami-0123456789abcdef0", instance_type=instance_type,
            user_data=cdk.Fn.base64("#!/bin/bash\necho hardened\n"),
        )
    AuditBacklog.apply_to(app, compliance=compliance)
    return stack, assertions.Template.from_stack(stack).to_json()


@pytest.mark.parametrize("preset", ["stig", "cis"])
def test_the_floor_lifts_small_types_and_memory_sizes_the_rest(preset):
    _, template = _app(preset)
    by_type = {}
    for launch in launches(template):
        (settings,) = block_settings(launch.user_data)
        by_type[launch.metadata["instanceType"]] = (launch.tuning.target, settings)
        assert launch.metadata["compliance"] == preset
        assert settings["CAB_KERNEL_CMDLINE"] == "1" and settings["CAB_MIN"] == "8192"
    assert {t: target for t, (target, _) in by_type.items()} == {
        t: rules for t, (rules, _) in FIGURES.items()
    }
    for _, settings in by_type.values():
        # The STIG greps for exactly audit_backlog_limit=8192; CIS takes the machine's limit (8192 or more).
        assert settings.get("CAB_CMDLINE_LIMIT") == ("8192" if preset == "stig" else None)


def test_the_policy_alone_would_go_below_the_floor():
    policy = BacklogPolicy()
    assert {t: policy.limit_for_memory(m) for t, m in {"t3.nano": 512, "t3.micro": 1024}.items()} == {
        t: alone for t, (_, alone) in FIGURES.items() if t in ("t3.nano", "t3.micro")
    }


def test_a_floor_that_is_a_large_share_of_memory_warns_with_the_figure():
    stack, _ = _app("stig", ["t3.nano", "t3.micro", "m5.large"])
    warnings = [
        str(w.entry.data)
        for w in assertions.Annotations.from_stack(stack).find_warning(
            "*", assertions.Match.string_like_regexp("floor of 8192")
        )
    ]
    assert len(warnings) == 2, warnings  # m5.large: 70 MiB of 8 GiB is 0.9 %, no warning
    assert any("70 MiB of a 512 MiB machine (13.7%)" in w for w in warnings), warnings
    assert any("70 MiB of a 1024 MiB machine (6.8%)" in w for w in warnings), warnings


def test_the_check_names_the_benchmark_rule_for_a_launch_below_the_floor():
    _, plain = _app(None, ["t3.micro"])
    (finding,) = AuditBacklogCheck(compliance="stig").check_template(plain)
    assert finding.rule == "BelowComplianceFloor"
    assert finding.message.startswith("DISA STIG V-274168")
    assert "it sets 1024, below 8192" in finding.message
    assert "does not set audit_backlog_limit on the kernel command line" in finding.message
    _, stig = _app("stig")
    assert AuditBacklogCheck(compliance="stig").check_template(stig) == []
    assert AuditBacklogCheck(compliance="cis").check_template(stig) == []


def test_the_stig_check_wants_exactly_8192_on_the_command_line():
    _, cis = _app("cis", ["r5.4xlarge", "m5.large"])
    findings = AuditBacklogCheck(compliance="stig").check_template(cis)
    assert [f.rule for f in findings] == ["BelowComplianceFloor"]
    assert "audit_backlog_limit=131072, not exactly 8192" in findings[0].message
    assert AuditBacklogCheck(compliance="cis").check_template(cis) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compliance": "pci"}, "compliance must be one of 'stig', 'cis' or None, got 'pci'"),
        (
            {"compliance": "stig", "backlog_limit": 4096},
            "backlog_limit must be at least 8192 with compliance='stig'",
        ),
        (
            {"compliance": "cis", "policy": BacklogPolicy(maximum=4096)},
            "policy.maximum must be at least 8192 with compliance='cis'",
        ),
    ],
)
def test_bad_compliance_input_is_refused_naming_the_option(kwargs, message):
    for make in (lambda: TuningOptions(**kwargs), lambda: AuditBacklog(**kwargs)):
        with pytest.raises(ValueError, match=message):
            make()
    if set(kwargs) == {"compliance"}:
        with pytest.raises(ValueError, match=message):
            AuditBacklogCheck(**kwargs)


def test_the_stig_block_puts_8192_on_the_command_line_and_more_in_the_rules(tmp_path):
    """On a fixture root with GRUB (Debian's layout) and 16 GiB: the rules get the memory's 16384, every
    kernel's command line exactly 8192."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, "debian12", mem_kib=16 * 1024 * 1024)
    block = render_block(
        BlockInputs.for_options(TuningOptions(compliance="stig"), target=None, source="unknown")
    )
    r = fx.run_user_data(root, sandbox, "#!/bin/bash\n" + block)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{PREFIX}cmdline: audit_backlog_limit=8192 update-grub" in r.stdout.splitlines(), r.stdout
    grub = (root / "etc/default/grub").read_text()
    assert "audit_backlog_limit=8192" in grub and "audit_backlog_limit=16384" not in grub
    assert fx.kernel(root)["backlog_limit"] == 16384, r.stdout


def test_apply_to_passes_the_preset_to_the_association():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet")
    ec2.CfnInstance(stack, "I", image_id="ami-0123456789abcdef0", instance_type="t3.micro")
    AuditBacklog.apply_to(app, compliance="stig", association=True)
    documents = assertions.Template.from_stack(stack).find_resources("AWS::SSM::Document")
    (document,) = documents.values()
    (step,) = document["Properties"]["Content"]["mainSteps"]
    commands = step["inputs"]["runCommand"]
    assert (
        "CAB_MIN=8192" in commands
        and "CAB_KERNEL_CMDLINE=1" in commands
        and "CAB_CMDLINE_LIMIT=8192" in commands
    )
