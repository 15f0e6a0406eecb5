"""Real kernel, machine already running: the example app's SSM document commands (from the synthesized
template)
run as the SSM agent runs them on the AL2-like image booted with user data that does not tune (see
e2e/ssm.py).
One qemu boot per suite in ``e2e.image.SUITES``; qemu that cannot run fails these tests, it never skips
them."""

from __future__ import annotations

import pytest

from cdk_audit_backlog import BacklogPolicy
from e2e import image as images
from e2e import ssm

pytestmark = pytest.mark.e2e

AL2_SHIPPED_LIMIT = 320
OK, NO_AUDITCTL, NOT_PERSISTED = "0", "3", "5"


@pytest.fixture(scope="module", params=images.SUITES)
def machine(request):
    r = ssm.running_machine(request.param)
    print(f"e2e {r.suite} ssm: {r.seconds:.0f}s, one boot ({r.run.elapsed_s:.0f}s qemu)")
    return r


def _policy_limit(machine) -> int:
    return BacklogPolicy().limit_for_memory_bytes(int(machine.begin["memtotal_kb"]) * 1024)


def test_the_boot_did_not_tune_and_every_step_ran(machine):
    assert machine.ended, f"the sequence did not finish; serial log {machine.run.log}"
    boot = machine.run.boot(1)
    assert boot["audit.backlog_limit"] == str(AL2_SHIPPED_LIMIT)
    assert boot["output_lines"] == "0"  # no block in the user data
    assert machine.steps["before"]["limit"] == str(AL2_SHIPPED_LIMIT)
    assert int(machine.begin["script_bytes"]) == len("\n".join(machine.commands) + "\n")


def test_first_run_sets_the_policy_limit_for_memtotal_without_restarting_auditd(machine):
    before, first = machine.steps["before"], machine.steps["first"]
    target = _policy_limit(machine)
    assert target > AL2_SHIPPED_LIMIT
    assert first["rc"] == OK and first["limit"] == str(target)
    assert first["pid"] == before["pid"] != "0" and first["nrestarts"] == before["nrestarts"]
    assert first["files"] != before["files"]  # persisted
    assert any(
        f"backlog_limit {AL2_SHIPPED_LIMIT} -> {target} (ssm-association, MemTotal" in line
        and "method auditctl" in line
        for line in machine.output("first")
    )


def test_second_run_changes_nothing(machine):
    first, second = machine.steps["first"], machine.steps["second"]
    assert second["rc"] == OK
    assert {k: second[k] for k in ("limit", "pid", "nrestarts", "files")} == {
        k: first[k] for k in ("limit", "pid", "nrestarts", "files")
    }
    assert any("method none" in line for line in machine.output("second"))


def test_a_drift_is_restored_by_the_next_run(machine):
    drift, after = machine.steps["drift"], machine.steps["after-drift"]
    assert drift["limit"] == str(AL2_SHIPPED_LIMIT)
    assert after["rc"] == OK and after["limit"] == str(_policy_limit(machine))
    assert after["pid"] == drift["pid"] and after["nrestarts"] == drift["nrestarts"]


def test_a_read_only_rules_dir_fails_the_run_but_the_limit_still_applies_now(machine):
    ro, again = machine.steps["read-only"], machine.steps["writable-again"]
    assert ro["rc"] == NOT_PERSISTED
    assert ro["limit"] == str(_policy_limit(machine))
    assert any(
        "persist: cannot write /etc/audit/rules.d/zz-cdk-audit-backlog.rules" in line
        for line in machine.output("read-only")
    )
    assert again["rc"] == OK


def test_missing_auditctl_fails_the_run(machine):
    step = machine.steps["no-auditctl"]
    assert step["rc"] == NO_AUDITCTL
    assert "cdk-audit-backlog: no auditd: nothing applied" in machine.output("no-auditctl")
    # systemd units run with SIGPIPE ignored: before st() kept its ERR trap out of the process substitution,
    # this run printed "echo: write error: Broken pipe" on both suites.
    assert not [line for line in machine.output("no-auditctl") if "write error" in line]


def test_immutable_rules_exit_0_and_report_next_boot(machine):
    step = machine.steps["immutable"]
    assert machine.steps["immutable-set"]["enabled"] == "2"
    assert step["rc"] == OK and step["limit"] == str(AL2_SHIPPED_LIMIT)  # the kernel refuses until reboot
    assert "cdk-audit-backlog: immutable: takes effect at next boot" in machine.output("immutable")


def test_auditd_was_never_restarted(machine):
    steps = machine.steps
    assert {s["pid"] for s in steps.values()} == {steps["before"]["pid"]}
    assert {s["nrestarts"] for s in steps.values()} == {steps["before"]["nrestarts"]}


def test_the_document_installs_the_sampler_on_a_running_machine(machine):
    """The example app monitors: the first run installed the sampler's timer and started it."""
    line = machine.run.grep(r"E2E-SSM-SAMPLER ")
    assert line and "timer=active" in line[0] and "installed=yes" in line[0], line
    said = machine.output("first")
    assert any(out.startswith("cdk-audit-backlog: monitor: sampler every 60s") for out in said), said


def test_a_later_rules_file_with_a_smaller_b_is_reported_not_fought(machine):
    later = machine.steps["later-file"]
    assert later["rc"] == NOT_PERSISTED  # the association shows it: NON_COMPLIANT
    assert later["limit"] == str(_policy_limit(machine))  # applied now all the same
    assert "cdk-audit-backlog: persist: rules load -b 512" in machine.output("later-file")
    kept = machine.run.grep(r"E2E-SSM-LATER-FILE ")
    assert kept and "content=-b 512" in kept[0], kept  # the other tool's file is left as it was
