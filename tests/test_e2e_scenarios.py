"""Real kernel: the example app's (and e2e/fixture_app.py's) synthesized user data booted under qemu (see
e2e/), on every suite in ``e2e.image.SUITES`` (Debian 12: kernel 6.1, audit 3.0.9, cloud-init 22.4;
Debian 13: kernel 6.12, audit 4.0.2, cloud-init 25.1). Slow (1-3 min per boot under TCG; 6 qemu runs,
7 boots per suite, and the mixed group's 2 on the default suite); qemu that cannot run fails these tests,
it never skips them. Under `make test` each suite's boots run on a pytest-xdist worker of their own
(tests/conftest.py)."""

from __future__ import annotations

import json
import re

import pytest

from e2e import scenarios, vm
from e2e.scenarios import merged_b, result_line, rules_d_b

pytestmark = pytest.mark.e2e

DEBIAN_SHIPPED_LIMIT = 8192  # Debian 12 and 13 rules.d/audit.rules: -b 8192 (as Debian ships it)
PADDING_LINES = 136  # the user script lines of e2e/fixture_app.py's MixedTemplate
AL2_SHIPPED_LIMIT = 320

# What each suite is (Debian 12: kernel 6.1, audit 3.0.9; Debian 13: 6.12, audit 4.0.2), checked on the
# booted guest: the generation the scenarios ran on, and which unit loaded the rules at boot.
GENERATIONS = {
    "bookworm": {"kernel": "6.1.", "audit": "3.0.9", "cloud_init": "22.4", "rules_loader": "auditd.service"},
    "trixie": {
        "kernel": "6.12.",
        "audit": "4.0.2",
        "cloud_init": "25.1",
        "rules_loader": "audit-rules.service",
    },
}


_TIMINGS: list = []


def _record(s: scenarios.Scenario) -> scenarios.Scenario:
    summary = scenarios.summary(s)
    _TIMINGS.append(summary)
    path = scenarios.WORK / "timings.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return s


@pytest.fixture(scope="module", autouse=True)
def _print_timings(request):
    """After the module: one line per scenario with its boots' wall times, for the CI log."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _TIMINGS:
        return
    reporter.write_line("")
    for suite in sorted({t["suite"] for t in _TIMINGS}):
        reporter.write_line(f"e2e image {suite}: base tree {scenarios.images.base_build_seconds(suite)}")
    for t in _TIMINGS:
        boots = ", ".join(f"{b['run']}#{b['boot']} {b['run_seconds']}s" for b in t["boots"])
        reporter.write_line(f"e2e {t['suite']} {t['scenario']}: {t['seconds']}s in all ({boots}; "
                            f"accel {t['boots'][0]['accel']}; kernel {t['boots'][0]['kernel']})")


# Module scope with a parameter: pytest runs every test of one suite before it boots the next suite.
@pytest.fixture(scope="module", params=scenarios.images.SUITES)
def suite(request):
    return request.param


@pytest.fixture(scope="module")
def debian(suite):
    # One disk, two runs: the fixture's Strict Instance (kernel_cmdline=True, a strict user script), then a
    # new instance on the same disk booted with the arguments grub.cfg gives it (scenarios 1, 3, 5, 6).
    return _record(scenarios.debian_chain(suite=suite))


@pytest.fixture(scope="module")
def al2(suite):
    # The small storm that CI runs: same burst, AL2's 320 against the limit the block applied ("boot").
    return _record(scenarios.al2_layout(storm_spec="320:0:1000:5,boot:0:1000:5", suite=suite))


@pytest.fixture(scope="module")
def immutable(suite):
    return _record(scenarios.immutable_then_reboot(suite=suite))


@pytest.fixture(scope="module")
def resize(al2):
    # Two more boots of al2's disk (1 GiB, then 8 GiB), same instance-id: only the boot unit runs.
    return _record(scenarios.resize_after(al2))


def _assert_unit_ran_before_the_rules_loaded(report):
    """cdk-audit-backlog.service ended before the unit that loads the rules started (auditd.service on
    audit 3.x, audit-rules.service on audit 4; whichever exist), and succeeded."""
    assert report["boot_unit_result"] == "success active", report["boot_unit_result"]
    ended = int(report["boot_unit_exit_us"])
    loaders = [
        int(report[k]) for k in ("auditd_start_us", "audit_rules_start_us") if int(report.get(k) or 0) > 0
    ]
    assert ended > 0 and loaders, report
    assert ended <= min(loaders), (ended, loaders)


@pytest.fixture(scope="module")
def mixed():
    return _record(scenarios.mixed_group_per_machine())


def _assert_rules_files_safe(report):
    files = vm.files(report)
    assert files, "the reporter listed no files"
    for path, info in files.items():
        if path.startswith(("/etc/audit/", "/var/lib/cdk-audit-backlog/")):
            assert info["owner"] == "root:root", (path, info["owner"])
            assert info["mode"] & 0o027 == 0, (path, oct(info["mode"]))  # auditctl -R refuses other-readable


# -- 1. Debian default --------------------------------------------------------------------------------------

def test_debian_block_reports_and_keeps_the_larger_shipped_limit(debian):
    assert debian.target == "1024"  # t3.micro, 1 GiB
    rep = debian.runs[0].boot(1)
    assert rep["instance_id"] == "i-e2e-debian-1"
    line = result_line(rep)
    assert line is not None, vm.outputs(rep)
    old, new, detail = line
    expected = max(DEBIAN_SHIPPED_LIMIT, int(debian.target))  # never lowered (allow_lower=0)
    assert (old, new) == (str(DEBIAN_SHIPPED_LIMIT), str(expected))
    assert "t3.micro" in detail
    assert f"cdk-audit-backlog: persist: kept -b {DEBIAN_SHIPPED_LIMIT}" in vm.outputs(rep)
    assert vm.audit_status(rep)["backlog_limit"] == str(expected)
    # The console line also reached the serial console, as an instance's console output would show it.
    assert debian.runs[0].grep(r"cdk-audit-backlog: backlog_limit \d+ -> \d+")


def test_boot_unit_keeps_debians_shipped_8192_on_a_1_gib_boot(debian):
    """Boot 2 of the same disk (1 GiB): the boot unit the block installed in boot 1 runs before the rules
    load, computes 1024 from MemTotal and keeps the distribution's larger 8192 (its own file stays empty)."""
    first, second = debian.runs[0].boot(1), debian.runs[1].last()
    assert scenarios.early_limit(first) == str(DEBIAN_SHIPPED_LIMIT)  # no unit yet: the shipped rules
    _assert_unit_ran_before_the_rules_loaded(second)
    out = scenarios.unit_outputs(second)
    assert out[0].startswith("cdk-audit-backlog: target 1024 (boot, MemTotal "), out
    assert f"cdk-audit-backlog: persist: kept -b {DEBIAN_SHIPPED_LIMIT}" in out
    assert scenarios.early_limit(second) == str(DEBIAN_SHIPPED_LIMIT)
    assert vm.audit_status(second)["backlog_limit"] == str(DEBIAN_SHIPPED_LIMIT)
    # last: what user data printed (read from cloud-final's journal by the reporter)
    assert "cdk-audit-backlog: unit: installed (boot target auto)" in vm.outputs(first)


def test_debian_rules_files_are_as_designed(debian):
    rep = debian.runs[0].boot(1)
    files = vm.files(rep)
    merged = files["/etc/audit/audit.rules"]["content"]
    assert merged_b(merged) == int(vm.audit_status(rep)["backlog_limit"])  # what auditd loaded
    assert rules_d_b(files) == int(vm.audit_status(rep)["backlog_limit"])  # and what the next boot merges
    assert "--backlog_wait_time 60000" in merged and "-f 1" in merged  # the distribution's other lines kept
    _assert_rules_files_safe(rep)
    assert any(p.startswith("/var/lib/cdk-audit-backlog/") for p in files), sorted(files)


def test_each_suite_is_the_generation_it_claims_and_loads_rules_its_way(debian, suite):
    """The same scenarios mean something on both generations only if the guest really is that generation:
    kernel, audit userspace, cloud-init, and the unit that ran `augenrules --load` at boot."""
    want = GENERATIONS[suite]
    rep = debian.runs[0].boot(1)
    assert rep["kernel"].startswith(want["kernel"]), rep["kernel"]
    assert rep["audit_version"] == want["audit"]
    assert rep["cloud_init_version"].startswith(want["cloud_init"]), rep["cloud_init_version"]
    if want["rules_loader"] == "auditd.service":  # audit 3.x: ExecStartPost=-/sbin/augenrules --load
        assert "augenrules" in rep["auditd_exec_start_post"]
    else:  # audit 4.0: its own oneshot, required by auditd.service; auditd.service loads nothing itself
        assert rep["auditd_exec_start_post"] == ""
        assert "audit-rules.service" in rep["auditd_requires"].split()
        assert rep["audit_rules_service"].split()[0] == "success"
    # Either way the shipped rules were loaded before the user data ran (the block saw 8192, not 64).
    assert result_line(rep)[0] == str(DEBIAN_SHIPPED_LIMIT)
    # `auditctl -h` exits 255 after its usage text on both (the block's wait-time probe must not read the
    # exit status; tests/test_boot_script.py checks the probe against both real auditctl builds).
    assert rep["auditctl_h_rc"] == "255"


# -- 3. Rerun with a new instance-id on the same disk -------------------------------------------------------

def test_rerun_with_new_instance_id_changes_nothing(debian):
    """The same user data for a new instance on the same disk (booted with grub.cfg's arguments, which now
    carry audit_backlog_limit=): the block runs again and changes no file, GRUB's included."""
    first, second = debian.runs[0].boot(1), debian.runs[1].last()
    assert second["instance_id"] == "i-e2e-debian-2"
    assert "cdk-audit-backlog: cmdline: audit_backlog_limit=8192 already set" in vm.outputs(second)
    line = result_line(second)
    assert line is not None, "the block did not run again for the new instance-id"
    assert line[0] == line[1] == vm.audit_status(first)["backlog_limit"]
    assert vm.audit_status(second)["backlog_limit"] == vm.audit_status(first)["backlog_limit"]
    before = {p: (i["sha256"], i["mtime"]) for p, i in vm.files(first).items() if p.startswith("/etc/")}
    after = {p: (i["sha256"], i["mtime"]) for p, i in vm.files(second).items() if p.startswith("/etc/")}
    assert after == before
    state = {
        p: i["sha256"] for p, i in vm.files(first).items() if p.startswith("/var/lib/cdk-audit-backlog/")
    }
    assert state == {p: i["sha256"] for p, i in vm.files(second).items() if p in state}


# -- 2. Amazon-Linux-2-like layout (+ the small storm) -------------------------------------------------------

def test_al2_layout_comes_up_tuned_not_320(al2):
    assert al2.target == "8192"  # m5.large, 8 GiB
    rep = al2.runs[0].boot(1)
    assert rep["auditd_refuse_manual_stop"] == "yes"
    line = result_line(rep)
    assert line is not None, vm.outputs(rep)
    assert (line[0], line[1]) == (str(AL2_SHIPPED_LIMIT), "8192")
    assert vm.audit_status(rep)["backlog_limit"] == "8192"
    assert vm.audit_status(rep)["pid"] != "0"  # auditd still owns the audit socket
    assert rep["auditd_active"] == "active"
    assert rules_d_b(vm.files(rep)) == 8192  # what augenrules merges at the next boot
    _assert_rules_files_safe(rep)
    assert rep["motd"] == "worker ready"  # the launch template's own line ran after the block


def test_small_storm_loses_records_at_320_and_none_at_the_tuned_limit(al2):
    runs = {r["limit"]: r for r in al2.runs[0].storm}
    assert set(runs) == {"320", "8192"}, al2.runs[0].storm
    # 1,000 openat calls (~5 records each) while auditd is stopped: 320 holds about 100 of them (the kernel
    # counts one lost per refused event), 8192 holds all.
    assert int(runs["320"]["lost"]) > 500
    assert int(runs["8192"]["lost"]) == 0
    assert all(r["drained"] == "yes" for r in runs.values())


# -- Live health: the sampler the example app's monitoring installs, around the same storm -------------------

def _samples(run, prefix):
    return [x for x in run.samples if x.tag.startswith(prefix)]


def test_sampler_timer_is_installed_and_ran_before_the_storm(al2):
    run = al2.runs[0]
    assert run.sampler.get("timer") == "active", run.sampler
    assert run.sampler.get("service_result") == "success", run.sampler
    assert int(run.sampler.get("service_ran_us", "0")) > 0, run.sampler  # the timer fired at least once
    assert run.sampler.get("interval") == "60", run.sampler  # app.py's monitoring=True: the default 60 s
    out = vm.outputs(run.boot(1))
    assert any(line.startswith("cdk-audit-backlog: monitor: sampler every 60s") for line in out), out


def test_published_lost_events_equal_the_kernels_and_backlog_use_rises_while_auditd_is_paused(al2):
    """Per storm run: the lost increases the sampler published from just before to just after the run add up
    to what the kernel counted over the run (896-ish at 320, 0 at the tuned limit); the sample taken inside
    the burst, auditd still stopped, shows the queue's use; auditd owns the socket throughout."""
    run = al2.runs[0]
    storms = {r["limit"]: r for r in run.storm}
    for spec, limit in (("320:0:1000:5", "320"), ("boot:0:1000:5", "8192")):
        pre, mid, post = (_samples(run, f"{phase} run={spec}") for phase in ("pre", "mid", "post"))
        assert len(pre) == len(mid) == len(post) == 1, [x.tag for x in run.samples]
        published = mid[0].metrics["AuditLostEvents"] + post[0].metrics["AuditLostEvents"]
        assert published == int(storms[limit]["lost"]), (spec, published, storms[limit])
        # At 320 the queue's use rose while auditd was stopped (kernel 6.1 showed 100 %, 6.12 about 70 %: its
        # kauditd moves records off the queue into its hold queue). At the tuned limit it stays below 100 %;
        # how many records sit in the queue at that moment depends on how far the guest's kauditd got with
        # them (seen: 5,100 on a loaded host, 40-206 on a quiet one), so there only the bound is checked.
        use = mid[0].metrics["AuditBacklogUsePercent"]
        if limit == "320":
            assert use > pre[0].metrics["AuditBacklogUsePercent"], (pre[0], mid[0])
            assert published > 500, published
            assert post[0].metrics["AuditBacklog"] < mid[0].metrics["AuditBacklog"]  # drained after the pause
        else:
            assert published == 0 and use < 100, (published, use)
            assert post[0].metrics["AuditBacklog"] <= mid[0].metrics["AuditBacklog"]
        for x in pre + mid + post:
            assert x.owner == "auditd", x
            assert x.metrics["AuditBacklogLimit"] == int(limit) and x.metrics["AuditBacklogTarget"] == 8192
        for x in pre + post:
            assert x.same == "yes", x  # what it printed is the datagram the listener caught


def test_drift_is_restored_once_reported_once_and_never_loops(al2):
    run = al2.runs[0]
    by_tag = {x.tag: x for x in run.samples if x.tag.startswith("drift-")}
    assert set(by_tag) >= {"drift-before", "drift-lowered", "drift-lowered-again", "drift-unchanged",
                           "drift-audit-off", "drift-restored-by-hand"}, sorted(by_tag)
    assert by_tag["drift-before"].metrics["AuditBacklogDrift"] == 0 and by_tag["drift-before"].said == "-"
    lowered = by_tag["drift-lowered"]
    assert lowered.metrics["AuditBacklogDrift"] == 8192 - 1000
    assert "drift: auditd (pid " in lowered.said, lowered.said
    assert "has backlog_limit 1000, our target 8192: restored" in lowered.said, lowered.said
    again = by_tag["drift-lowered-again"]
    assert again.metrics["AuditBacklogDrift"] == 8192 - 1000
    assert "restored once this boot already" in again.said, again.said
    # the same state again: the figure stays, no new console line; audit off changes no limit and says nothing
    for tag in ("drift-unchanged", "drift-audit-off"):
        assert by_tag[tag].metrics["AuditBacklogDrift"] == 8192 - 1000, by_tag[tag]
        assert by_tag[tag].said == "-", by_tag[tag]
    assert by_tag["drift-restored-by-hand"].metrics["AuditBacklogDrift"] == 0
    assert all(x.same == "yes" for x in by_tag.values())


def test_sample_cpu_was_measured(al2):
    """The figure the closing note and docs quote (benchmarks/ prints the ratio); here only that it ran."""
    cpu = al2.runs[0].sample_cpu
    assert cpu.get("samples") == "5" and float(cpu["cpu_s"]) > 0 and float(cpu["ref_cpu_s"]) > 0, cpu


# -- 7. Resize: the user-data route, 8 GiB -> 1 GiB -> 8 GiB on the same disk --------------------------------

def test_resize_follows_memory_from_the_first_rule_load(al2, resize):
    first = al2.runs[0].boot(1)
    # 8 GiB, user data: the image's 320 when the rules loaded (no unit yet), the block's 8192 after
    # cloud-final.
    assert scenarios.early_limit(first) == str(AL2_SHIPPED_LIMIT)
    assert vm.audit_status(first)["backlog_limit"] == "8192"
    for run, want in zip(resize.runs, ("1024", "8192")):
        rep = run.last()
        assert rep["instance_id"] == "i-e2e-al2-1"
        assert vm.outputs(rep) == []  # same instance: cloud-init did not run the user data again
        _assert_unit_ran_before_the_rules_loaded(rep)
        out = scenarios.unit_outputs(rep)
        assert "cdk-audit-backlog: persist: wrote /etc/audit/rules.d/zz-cdk-audit-backlog.rules" in out, out
        assert any(
            line.startswith("cdk-audit-backlog: backlog_limit ") and f" -> {want} (boot, MemTotal " in line
            for line in out
        ), out
        # In force from the boot's first rule load (these boots run without cloud-init: nothing of ours runs
        # through it for the same instance), read long before the reporter ran ...
        assert scenarios.early_limit(rep) == want, run.name
        assert rep["cloud_init_errors"] == "none" and int(rep["cloud_final_start_us"]) == 0
        assert float(rep["early.uptime_s"]) < float(rep["uptime_s"])
        # ... and still after cloud-final; the next boot merges the same.
        assert vm.audit_status(rep)["backlog_limit"] == want
        assert rules_d_b(vm.files(rep)) == int(want)
        _assert_rules_files_safe(rep)
    # last: what user data printed in boot 1 (read from cloud-final's journal by the reporter)
    assert "cdk-audit-backlog: unit: installed (boot target auto)" in vm.outputs(first)


# -- 4. Immutable (-e 2) -------------------------------------------------------------------------------------

def test_immutable_is_reported_persisted_and_in_effect_after_reboot(immutable):
    run = immutable.runs[0]
    first, second = run.boot(1), run.boot(2)
    assert vm.audit_status(first)["enabled"] == "2"
    assert vm.audit_status(first)["backlog_limit"] == str(AL2_SHIPPED_LIMIT)  # the kernel refused the change
    said = " ".join(vm.outputs(first)).lower()
    assert "immutable" in said and "next boot" in said, vm.outputs(first)
    assert vm.outputs(second) == []  # same instance: the user data did not run again
    assert vm.audit_status(second)["enabled"] == "2"
    assert vm.audit_status(second)["backlog_limit"] == immutable.target == "1024"
    _assert_rules_files_safe(second)


# -- 5. Kernel command line; 6. user script with set -e and exit 0 -------------------------------------------

def test_kernel_cmdline_is_set_in_grub_and_in_effect_after_reboot(debian):
    """Where the next boot reads it: the image has a cloud image's GRUB drop-in that sets GRUB_CMDLINE_LINUX
    again after /etc/default/grub, so the value goes into a drop-in of ours that sorts after it; grub.cfg,
    regenerated, has it, and the next boot (with grub.cfg's arguments) runs with it."""
    first = debian.runs[0].boot(1)
    line = result_line(first)
    assert line is not None, vm.outputs(first)
    want = f"audit_backlog_limit={line[1]}"  # the effective limit (Debian's 8192 kept, never lowered to 1024)
    assert int(line[1]) >= int(debian.target)
    files = vm.files(first)
    assert "/etc/default/grub.d/50-cloudimg-settings.cfg" in files  # the image's drop-in, read before ours
    ours = files.get("/etc/default/grub.d/zz-cdk-audit-backlog.cfg")
    assert ours is not None and want in str(ours["content"]), sorted(files)
    assert want not in str(files["/etc/default/grub"]["content"])  # the main file is left as it was
    assert f"cdk-audit-backlog: cmdline: {want} update-grub" in vm.outputs(first)
    assert want in first["grub_linux_line"], "update-grub did not put the option into grub.cfg"
    assert len(debian.runs) == 2
    second = debian.runs[1].last()
    assert want in second["cmdline"].split()
    assert vm.audit_status(second)["backlog_limit"] == line[1]


def test_strict_user_script_still_runs_entirely(debian):
    rep = debian.runs[0].boot(1)
    out = vm.outputs(rep)
    steps = [re.match(r"E2E-USER step=(\d)", line).group(1) for line in out if line.startswith("E2E-USER")]
    assert steps == ["1", "2", "3"], out
    assert rep["user_script_marker"] == "present"
    first_user = next(i for i, line in enumerate(out) if line.startswith("E2E-USER"))
    assert any(scenarios.RESULT_LINE.match(line) for line in out[:first_user])  # the block ran first


# -- 7. Mixed group: one launch template, machines of different memory, each sized at boot -------------------

def test_mixed_group_template_is_auto_and_its_metadata_lists_both_limits():
    meta = scenarios.fixture_metadata("MixedTemplate")
    assert meta["limit"] == "auto"
    assert meta["perType"] == {"m5.large": 8192, "r5.4xlarge": 131072}
    assert (
        scenarios.userdata.block_target(
            scenarios.userdata.find(scenarios.fixture_user_data(), "MixedTemplate")
        )
        == "auto"
    )


def test_mixed_group_each_machine_sizes_itself_from_its_memtotal(mixed):
    assert mixed.target == "auto"
    got = {}
    for run in mixed.runs:
        rep = run.boot(1)
        line = result_line(rep)
        assert line is not None, vm.outputs(rep)
        assert line[0] == str(AL2_SHIPPED_LIMIT), line  # the AL2-like 320: below both, masks nothing
        assert "mixed, MemTotal" in line[2], line
        assert vm.audit_status(rep)["backlog_limit"] == line[1]
        assert rules_d_b(vm.files(rep)) == int(line[1])  # persisted for the next boot too
        # A user script of about 12.5 KB: the block is compact (the plain one would not fit in 16,384 bytes),
        # its console lines are the plain block's, and every line of the user script ran after it.
        assert b"base64 -d" in mixed.user_data and len(mixed.user_data) <= 16384, len(mixed.user_data)
        assert f"E2E-USER mixed group member booted after {PADDING_LINES} lines" in vm.outputs(rep)
        got[run.name] = int(line[1])
    # 1 GiB guest: MemTotal ~ 0.95 GiB -> 1024; 8 GiB guest (m5.large's memory) -> 8192, as perType says.
    assert got == {"mixed-1024": 1024, "mixed-8192": 8192}
