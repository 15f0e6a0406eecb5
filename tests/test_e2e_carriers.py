"""Real kernel: carriers that are not CDK user data (see ``e2e/carriers.py``), on the default suite only
(one boot each; the user-data mechanics per suite are covered by ``test_e2e_scenarios.py``)."""

from __future__ import annotations

import email

import pytest

from e2e import carriers, vm
from e2e.scenarios import result_line, rules_d_b

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def karpenter():
    return carriers.karpenter_al2023()


def test_karpenter_merge_puts_node_config_first_and_our_part_next(karpenter):
    message = email.message_from_bytes(karpenter.user_data)
    types = [p.get_content_type() for p in message.get_payload()]
    assert types == ["application/node.eks.aws", "text/x-shellscript"]


def test_karpenter_al2023_part_sizes_the_limit_from_memtotal_at_boot(karpenter):
    (run,) = karpenter.runs
    report = run.boot(1)
    found = result_line(report)
    assert found is not None, vm.outputs(report)
    before, after, detail = found
    # The AL2-like image ships -b 320; a 1 GiB guest's MemTotal gives 1024 (auto, "karpenter" source).
    assert (before, after) == ("320", "1024"), found
    assert detail.startswith("karpenter, MemTotal ") and "method auditctl" in detail
    assert vm.audit_status(report)["backlog_limit"] == "1024"
    assert rules_d_b(vm.files(report)) == 1024  # and the next boot's rules load it
    assert report.get("cloud_init_errors") == "[]", report.get("cloud_init_errors")


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
    """No user data: 1 GiB -> 1024, 8 GiB -> 8192, 1 GiB -> 1024, already when auditd has loaded the rules
    (the AL2-like image ships -b 320)."""
    launches = [run.last() for run in image_builder.runs[1:]]  # the disk counts its boots on
    assert [_early(r) for r in launches] == ["1024", "8192", "1024"]
    assert [vm.audit_status(r)["backlog_limit"] for r in launches] == ["1024", "8192", "1024"]
    assert [result_line(r) for r in launches[:2]] == [None, None]  # no user data ran: only the unit sized it


def test_image_builder_test_phase_passes_on_a_launched_instance(image_builder):
    outputs = vm.outputs(image_builder.runs[-1].last())
    assert any(line.startswith("cdk-audit-backlog: test: backlog_limit 1024") for line in outputs), outputs
    assert "E2E-USER phases done" in outputs, outputs
