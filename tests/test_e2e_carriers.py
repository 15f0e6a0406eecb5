"""Real kernel: carriers that are not CDK user data (see ``e2e/carriers.py``), on the default suite only
(one boot each; the user-data mechanics per suite are covered by ``test_e2e_scenarios.py``)."""

from __future__ import annotations

import email

import pytest

from e2e import carriers, vm
from e2e.scenarios import result_line, rules_d_b, unit_outputs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def karpenter():
    return carriers.karpenter_al2023()


def test_karpenter_merge_puts_node_config_first_and_our_part_next(karpenter):
    message = email.message_from_bytes(karpenter.user_data)
    types = [p.get_content_type() for p in message.get_payload()]
    assert types == ["application/node.eks.aws", "text/x-shellscript"]


def test_karpenter_al2023_keeps_the_kernel_command_lines_larger_limit_over_two_boots(karpenter):
    """Rules with no -b, audit_backlog_limit=8192 on the kernel command line (a STIG-hardened image), a 1 GiB
    node whose policy gives 1024: the command line's 8192 is the machine's existing limit, so it is kept and
    no rules file sets a smaller -b; so at the next boot (the node rebooted; Karpenter's part installs no boot
    unit: nodes are replaced, not resized) the rule load leaves 8192 in force."""
    (run,) = karpenter.runs
    first, second = run.boot(1), run.boot(2)
    assert f"audit_backlog_limit={carriers.STIG_CMDLINE_LIMIT}" in first["cmdline"].split()
    out = vm.outputs(first)
    assert any(line.startswith("cdk-audit-backlog: target 1024 (karpenter, MemTotal ") for line in out), out
    found = result_line(first)
    assert found is not None, out
    before, after, detail = found
    assert (before, after) == ("8192", "8192"), found
    assert detail.startswith("karpenter, MemTotal "), detail
    assert vm.audit_status(first)["backlog_limit"] == "8192"
    assert rules_d_b(vm.files(first)) is None  # no rules file sets -b: the command line's value stays
    assert first.get("cloud_init_errors") == "[]", first.get("cloud_init_errors")
    # Boot 2 (the same node rebooted, user data not run again): 8192 from the first rule load on.
    assert vm.outputs(second) == [] and unit_outputs(second) == []
    assert second.get("early.backlog_limit") == "8192"
    assert vm.audit_status(second)["backlog_limit"] == "8192"
    assert rules_d_b(vm.files(second)) is None


# -- Image Builder: build on a running instance, then launches with no user data --------------------




@pytest.fixture(scope="module")
def image_builder():
    return carriers.image_builder_resize()


def _early(report):
    return report.get("early.backlog_limit")


def test_image_builder_build_and_validate_phases_pass_on_the_build_instance(image_builder):
    build = image_builder.runs[0].boot(1)
    outputs = vm.outputs(build)
    assert any(line.startswith("cdk-audit-backlog: unit: installed") for line in outputs), outputs
    assert any(
        line.startswith("cdk-audit-backlog: validate: cdk-audit-backlog.service enabled") for line in outputs
    ), outputs
    assert "E2E-USER phases done" in outputs, outputs


def test_image_builder_launches_follow_memory_from_the_first_rule_load(image_builder):
    """The launched instance: 1 GiB -> 1024, then started again at 8 GiB -> 8192, already when auditd has
    loaded the rules (the AL2-like image ships -b 320); no block ran (the test phase only reads)."""
    launches = [run.last() for run in image_builder.runs[1:]]  # the disk counts its boots on
    assert [_early(r) for r in launches] == ["1024", "8192"]
    assert [vm.audit_status(r)["backlog_limit"] for r in launches] == ["1024", "8192"]
    assert [result_line(r) for r in launches] == [None, None]  # only the unit sized it


def test_image_builder_test_phase_passes_on_a_launched_instance(image_builder):
    outputs = vm.outputs(image_builder.runs[1].last())
    assert any(line.startswith("cdk-audit-backlog: test: backlog_limit 1024") for line in outputs), outputs
    assert "E2E-USER phases done" in outputs, outputs
