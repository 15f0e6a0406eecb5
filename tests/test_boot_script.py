"""The real boot script (userdata/audit-backlog.sh) on fixture roots of every distribution layout
(tests/boot/fixtures.py).

Each fixture is a directory tree with the distribution's shipped rules files and fake ``auditctl``,
``augenrules``, ``systemctl``, ``service``, ``grubby``, ``update-grub``/``grub2-mkconfig`` and package
manager (tests/boot/fakes.py) that record their calls and emulate the real ones. The script runs with
only those plus a sandbox of real tools on PATH (a tool it uses that is not in the sandbox fails the
test). Every test asserts the kernel limit after the run, the limit the NEXT boot loads (a fresh kernel
state, then auditd's own start: ``augenrules --load`` or ``auditctl -R audit.rules``), the calls made
and the console lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdk_audit_backlog.user_data import BlockInputs, render_block
from tests.boot import fakes
from tests.boot import fixtures as fx

PREFIX = "cdk-audit-backlog: "
OUR_FILE = "etc/audit/rules.d/zz-cdk-audit-backlog.rules"
# Calls that reload or restart: the script must never make them (a one-off `augenrules` without
# --load only regenerates audit.rules).
FORBIDDEN = ("augenrules --load", "auditctl -R", "service", "systemctl", "auditctl -D", "auditctl -e")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


# The script's exit status (what an SSM association reads; user data ignores it).
OK, NO_AUDITCTL, NOT_APPLIED, NOT_PERSISTED = 0, 3, 4, 5


def run(root, sandbox, status=OK, **inputs):
    r = fx.run_script(root, sandbox, **inputs)
    assert r.returncode == status, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith(PREFIX) for line in lines), r.stdout
    return r


def result_line(stdout: str) -> str:
    found = [line for line in stdout.splitlines() if line.startswith(PREFIX + "backlog_limit ")]
    assert len(found) == 1, stdout
    return found[0]


def state(root) -> dict:
    text = (root / "var/lib/cdk-audit-backlog/state").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def merged_b(root) -> int | None:
    """The -b that augenrules' merge of the fixture's rules.d yields (the fakes' own merge)."""
    out = None
    for line in fakes.merged_rules(root).splitlines():
        if line.strip().startswith("-b"):
            out = int(line.split()[1])
    return out


def mutating(calls: list[str]) -> list[str]:
    return [c for c in calls if c not in ("auditctl -s", "auditctl -h")]


def assert_no_reload(root, calls):
    for c in calls:
        assert not c.startswith(FORBIDDEN), calls


# layout, target, kernel limit before, after, method, file the script writes (None: none), next boot
LAYOUT_CASES = [
    ("al2", 8192, 320, 8192, "auditctl", OUR_FILE, 8192),
    ("al2-rhel7-file", 16384, 8192, 16384, "auditctl", OUR_FILE, 16384),
    ("al2023-fedora-file", 8192, 64, 8192, "auditctl", OUR_FILE, 8192),
    ("al2023-rhel-file", 8192, 8192, 8192, "none", None, 8192),
    ("rhel9", 16384, 8192, 16384, "auditctl", OUR_FILE, 16384),
    ("rhel7", 16384, 8192, 16384, "auditctl", OUR_FILE, 16384),
    ("fedora", 4096, 64, 4096, "auditctl", OUR_FILE, 4096),
    ("ubuntu2204", 16384, 8192, 16384, "auditctl", OUR_FILE, 16384),
    ("ubuntu2404", 32768, 8192, 32768, "auditctl", OUR_FILE, 32768),
    ("debian12", 1024, 8192, 8192, "none", None, 8192),
    ("debian13", 1024, 8192, 8192, "none", None, 8192),
    ("debian13", 65536, 8192, 65536, "auditctl", OUR_FILE, 65536),
    ("al1", 8192, 320, 8192, "auditctl", "etc/audit/audit.rules", 8192),
    ("sles15", 8192, 64, 8192, "auditctl", OUR_FILE, 8192),
]


@pytest.mark.parametrize("name,target,before,after,method,written,next_boot", LAYOUT_CASES)
def test_each_layout_gets_the_right_effective_limit(
    tmp_path, sandbox, name, target, before, after, method, written, next_boot
):
    root = tmp_path / name
    fx.build(root, name)
    assert fx.kernel(root)["backlog_limit"] == before
    loads = fx.kernel(root)["loads"]
    r = run(root, sandbox, target=target, source="m5.large/8192MiB")
    k = fx.kernel(root)
    assert k["backlog_limit"] == after
    assert k["loads"] == loads, "the rule set was reloaded"
    assert result_line(r.stdout) == (
        f"{PREFIX}backlog_limit {before} -> {after} (m5.large/8192MiB; method {method}; lost 0)"
    )
    calls = fx.calls(root)
    assert_no_reload(root, calls)
    expected = ["auditctl -b %d" % after] if method == "auditctl" else []
    if written == OUR_FILE:
        expected = ["augenrules"] + expected  # regenerate audit.rules, no load
    assert mutating(calls) == expected
    if written is None:
        assert not (root / OUR_FILE).exists()
        assert "persist: wrote" not in r.stdout
    else:
        f = root / written
        assert f"{PREFIX}persist: wrote /{written}" in r.stdout
        assert f.stat().st_uid == os.getuid() and f.stat().st_mode & 0o777 in (0o600, 0o640)
    if fx.LAYOUTS[name].loader == "augenrules":
        assert merged_b(root) == next_boot
        # audit.rules was regenerated from rules.d: a plain `auditctl -R audit.rules` loads it too.
        assert (root / "etc/audit/audit.rules").read_text() == fakes.merged_rules(root)
    assert fakes.boot(root)["backlog_limit"] == next_boot
    s = state(root)
    assert s["target"] == str(target) and s["limit"] == str(after) and s["old"] == str(before)
    assert s["method"] == method and s["persisted"] == "yes" and s["source"] == "m5.large/8192MiB"


def test_debian_keeps_its_larger_8192_and_says_so(tmp_path, sandbox):
    root = tmp_path / "debian12"
    fx.build(root, "debian12")
    before = fx.tree_digest(root)
    r = run(root, sandbox, target=1024, source="t3.micro/1024MiB")
    assert f"{PREFIX}persist: kept -b 8192" in r.stdout.splitlines()
    assert mutating(fx.calls(root)) == []
    after = fx.tree_digest(root)
    after.pop("var/lib/cdk-audit-backlog/state")
    assert after == before


def test_amazon_linux_1_edits_audit_rules_in_place_with_a_backup(tmp_path, sandbox):
    root = tmp_path / "al1"
    fx.build(root, "al1")
    original = (root / "etc/audit/audit.rules").read_text()
    run(root, sandbox, target=8192)
    rules = (root / "etc/audit/audit.rules").read_text()
    assert (root / "etc/audit/audit.rules.cab-orig").read_text() == original
    assert rules.splitlines()[0] == "-b 8192"
    assert [line for line in rules.splitlines() if line.startswith("-b")] == ["-b 8192"]
    # everything else is kept, in order
    assert [line for line in rules.splitlines()[1:]] == [
        line for line in original.splitlines() if not line.startswith("-b")
    ]
    # rules.d is not what AL1 loads (USE_AUGENRULES="no"): left alone
    assert not (root / OUR_FILE).exists()
    assert (root / "etc/audit/rules.d/audit.rules").read_text() == fx.AL1_RULES


def test_missing_audit_rules_is_created_on_a_non_augenrules_system(tmp_path, sandbox):
    root = tmp_path / "al1"
    fx.build(root, "al1")
    (root / "etc/audit/audit.rules").unlink()
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: wrote /etc/audit/audit.rules" in r.stdout.splitlines()
    assert (root / "etc/audit/audit.rules").read_text() == "-b 8192\n"
    assert (root / "etc/audit/audit.rules").stat().st_mode & 0o777 == 0o640
    assert not (root / "etc/audit/audit.rules.cab-orig").exists()
    assert fakes.boot(root)["backlog_limit"] == 8192


def test_legacy_status_format_is_read(tmp_path, sandbox):
    root = tmp_path / "al1"
    fx.build(root, "al1", status_format="legacy")
    r = run(root, sandbox, target=4096)
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 320 -> 4096 (")


@pytest.mark.parametrize("name", ["ubuntu2204-no-auditd", "ubuntu2404-no-auditd"])
def test_without_auditd_nothing_is_applied_and_the_boot_goes_on(tmp_path, sandbox, name):
    root = tmp_path / name
    fx.build(root, name)
    r = run(root, sandbox, NO_AUDITCTL, target=8192, source="m5.large/8192MiB")
    assert f"{PREFIX}no auditd: nothing applied" in r.stdout.splitlines()
    assert result_line(r.stdout) == f"{PREFIX}backlog_limit ? -> ? (m5.large/8192MiB; method none; lost ?)"
    assert fx.calls(root) == []
    assert state(root)["persisted"] == "-"


def test_install_auditd_on_ubuntu_with_apt_get(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2204-no-auditd")
    r = run(root, sandbox, target=16384, install_auditd=1)
    calls = fx.calls(root)
    assert calls[:2] == ["apt-get update", "apt-get install -y auditd"]
    assert f"{PREFIX}install: auditd (apt-get)" in r.stdout.splitlines()
    # the package started auditd with Debian's rules (8192); the script then raised it
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 8192 -> 16384 (")
    assert fakes.boot(root)["backlog_limit"] == 16384


def test_install_auditd_on_al2023_with_dnf_sets_the_kernel_before_auditd_runs(tmp_path, sandbox):
    root = tmp_path / "al2023"
    fx.build(root, "al2023-fedora-file", auditd=False)
    r = run(root, sandbox, target=8192, install_auditd=1)
    assert fx.calls(root)[0] == "dnf install -y audit"
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 64 -> 8192 (")
    assert fakes.boot(root)["backlog_limit"] == 8192


@pytest.mark.parametrize("name,manager", [("al2", "yum"), ("sles15", "zypper"), ("rhel9", "dnf")])
def test_install_auditd_with_each_package_manager(tmp_path, sandbox, name, manager):
    root = tmp_path / name
    fx.build(root, name, auditd=False)
    r = run(root, sandbox, target=8192, install_auditd=1)
    assert fx.calls(root)[0] == f"{manager} install -y audit"
    assert f"{PREFIX}install: audit ({manager})" in r.stdout.splitlines()
    assert (root / "sbin/auditctl").exists()
    assert fakes.boot(root)["backlog_limit"] == 8192


def test_install_failure_is_reported_and_the_boot_goes_on(tmp_path, sandbox):
    root = tmp_path / "al2023"
    fx.build(root, "al2023-fedora-file", auditd=False, package_name="audit-not-here")
    r = run(root, sandbox, NO_AUDITCTL, target=8192, install_auditd=1)
    assert f"{PREFIX}install: audit failed (dnf)" in r.stdout.splitlines()
    assert f"{PREFIX}no auditd: nothing applied" in r.stdout.splitlines()


@pytest.mark.parametrize("how", ["kernel", "finalize"])
def test_immutable_persists_and_reports_next_boot(tmp_path, sandbox, how):
    root = tmp_path / how
    if how == "kernel":
        fx.build(root, "rhel9")
        fx.set_kernel(root, enabled=2)
    else:
        fx.build(root, "al2")
        (root / "etc/audit/rules.d/99-finalize.rules").write_text("-e 2\n")
        (root / "etc/audit/rules.d/99-finalize.rules").chmod(0o640)
        fakes.boot(root)
        fx.clear_calls(root)
        assert fx.kernel(root)["enabled"] == 2
    before = fx.kernel(root)["backlog_limit"]
    r = run(root, sandbox, target=16384, source="m5.xlarge/16384MiB")
    assert f"{PREFIX}immutable: takes effect at next boot" in r.stdout.splitlines()
    assert result_line(r.stdout) == (
        f"{PREFIX}backlog_limit {before} -> {before} (m5.xlarge/16384MiB; method next-boot; lost 0)"
    )
    assert mutating(fx.calls(root)) == []  # no auditctl -b (refused), no augenrules (exits anyway)
    assert (root / OUR_FILE).read_text() == "-b 16384\n"
    merged = fakes.merged_rules(root)
    if how == "finalize":
        assert merged.rstrip("\n").splitlines()[-1] == "-e 2"  # -e stays last after the merge
    nxt = fakes.boot(root)
    assert nxt["backlog_limit"] == 16384
    assert state(root)["method"] == "next-boot"


def test_larger_existing_rules_limit_is_never_lowered(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/audit.rules").write_text("-D\n-b 65536\n-f 1\n")
    fakes.boot(root)
    fx.clear_calls(root)
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: kept -b 65536" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 65536 -> 65536 (")
    assert mutating(fx.calls(root)) == []
    assert not (root / OUR_FILE).exists()
    assert fakes.boot(root)["backlog_limit"] == 65536


def test_allow_lower_lowers_both_rules_and_kernel(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/audit.rules").write_text("-D\n-b 65536\n-f 1\n")
    fakes.boot(root)
    fx.clear_calls(root)
    r = run(root, sandbox, target=8192, allow_lower=1)
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 65536 -> 8192 (")
    assert fakes.boot(root)["backlog_limit"] == 8192


# -b 0 is no limit at all (the kernel skips the backlog check): the largest limit there is, so raising
# it to a number would lower it. Kept, in the rules and in the kernel, unless allow_lower.
ZERO_RULES = {"al2": "etc/audit/rules.d/audit.rules", "al1": "etc/audit/audit.rules"}


def _booted_with_rules_b_0(tmp_path, name):
    """Fixture ``name`` whose rules say -b 0, booted (the kernel has no limit) and with no calls recorded."""
    root = tmp_path / name
    fx.build(root, name)
    rules = root / ZERO_RULES[name]
    rules.write_text(rules.read_text().replace("-b 320", "-b 0"))
    assert fakes.boot(root)["backlog_limit"] == 0
    fx.clear_calls(root)
    return root


@pytest.mark.parametrize("name", sorted(ZERO_RULES))
def test_rules_with_b_0_no_limit_are_kept(tmp_path, sandbox, name):
    root = _booted_with_rules_b_0(tmp_path, name)
    before = fx.tree_digest(root)
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: kept -b 0" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 0 -> 0 (")
    assert mutating(fx.calls(root)) == []
    after = fx.tree_digest(root)
    after.pop("var/lib/cdk-audit-backlog/state")
    assert after == before  # no file written, audit.rules not edited
    assert fakes.boot(root)["backlog_limit"] == 0


def test_rules_with_b_0_are_applied_to_a_kernel_still_at_a_number(tmp_path, sandbox):
    # The rules keep "no limit"; a kernel that has not loaded them yet gets it now, as the next boot would.
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/audit.rules").write_text("-D\n-b 0\n-f 1\n")
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: kept -b 0" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 320 -> 0 (")
    assert mutating(fx.calls(root)) == ["auditctl -b 0"]
    assert fakes.boot(root)["backlog_limit"] == 0


def test_running_kernel_with_no_limit_is_kept_while_rules_are_raised(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    fx.set_kernel(root, backlog_limit=0)  # set by hand or by another agent (auditbeat) since boot
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}apply: kept 0" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 0 -> 0 (")
    assert not any(c.startswith("auditctl -b") for c in fx.calls(root))
    assert fx.kernel(root)["backlog_limit"] == 0
    assert fakes.boot(root)["backlog_limit"] == 8192  # the rules' 320 is raised as usual


@pytest.mark.parametrize("name", sorted(ZERO_RULES))
def test_allow_lower_lowers_no_limit_in_rules_and_kernel(tmp_path, sandbox, name):
    root = _booted_with_rules_b_0(tmp_path, name)
    r = run(root, sandbox, target=8192, allow_lower=1)
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 0 -> 8192 (")
    assert "auditctl -b 8192" in fx.calls(root)
    assert fakes.boot(root)["backlog_limit"] == 8192


def _larger(a, b) -> bool:
    """Limit a is larger than limit b, 0 being no limit at all (the model the script must follow)."""
    return a != b and (a == 0 or (b != 0 and a > b))


_limits = st.sampled_from([0, 64, 320, 8192, 65536, 2147483647])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.one_of(st.none(), _limits), kernel=_limits, target=st.sampled_from([320, 8192, 131072]),
       allow_lower=st.booleans())
def test_hypothesis_never_lower_with_0_as_the_largest_limit(tmp_path_factory, sandbox, rules, kernel, target,
                                                            allow_lower):
    # The script against a model: the rules keep a larger -b (0 included) unless allow_lower; the running
    # kernel keeps a larger limit (0 included) unless allow_lower; the next boot loads what was persisted.
    root = tmp_path_factory.mktemp("never-lower") / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/audit.rules").write_text(
        "-D\n" + ("" if rules is None else f"-b {rules}\n") + "-f 1\n"
    )
    fakes.boot(root)
    fx.set_kernel(root, backlog_limit=kernel)
    r = run(root, sandbox, target=target, allow_lower=int(allow_lower))
    persisted = target if rules is None or allow_lower or _larger(target, rules) else rules
    applied = kernel if not allow_lower and _larger(kernel, persisted) else persisted
    assert fx.kernel(root)["backlog_limit"] == applied, r.stdout
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit {kernel} -> {applied} ("), r.stdout
    assert fakes.boot(root)["backlog_limit"] == persisted
    assert (f"{PREFIX}persist: kept -b {rules}" in r.stdout) == (persisted != target)


def test_larger_running_kernel_limit_is_kept_while_rules_are_raised(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    fx.set_kernel(root, backlog_limit=32768)
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}apply: kept 32768" in r.stdout.splitlines()
    assert "auditctl -b 8192" not in fx.calls(root)
    assert fakes.boot(root)["backlog_limit"] == 8192  # what the rules now load


def test_a_kernel_that_does_not_take_the_limit_is_reported(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    cfg = json.loads((root / ".fake/config.json").read_text())
    (root / ".fake/config.json").write_text(json.dumps(dict(cfg, kernel_ignores_b=True)))
    r = run(root, sandbox, NOT_APPLIED, target=8192)
    assert f"{PREFIX}verify failed" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 320 -> 320 (")
    assert_no_reload(root, fx.calls(root))  # no reload or restart to "fix" it


def test_a_later_rules_file_that_wins_the_merge_is_reported(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    late = root / "etc/audit/rules.d/_site-override.rules"  # '_' sorts after letters in ls -1v
    late.write_text("-b 512\n")
    late.chmod(0o640)
    fakes.boot(root)
    fx.clear_calls(root)
    r = run(root, sandbox, NOT_PERSISTED, target=8192)
    assert f"{PREFIX}persist: rules load -b 512" in r.stdout.splitlines()
    assert state(root)["persisted"] == "no"
    assert fx.kernel(root)["backlog_limit"] == 8192  # applied for this boot all the same


@pytest.mark.parametrize(
    "name,wait",
    [("al2", None), ("al1", 6000), ("rhel9", 15000), ("debian12", None), ("sles15", None),
     ("ubuntu2204-no-auditd", None)],
)  # fmt: skip
def test_rerun_changes_no_file_and_calls_nothing_that_changes_state(tmp_path, sandbox, name, wait):
    root = tmp_path / name
    fx.build(root, name)
    inputs = dict(target=16384, kernel_cmdline=1, wait=wait)
    status = NO_AUDITCTL if name.endswith("no-auditd") else OK
    run(root, sandbox, status, **inputs)
    before = fx.tree_digest(root)
    kernel_before = fx.kernel(root)
    fx.clear_calls(root)
    r = run(root, sandbox, status, **inputs)
    assert fx.tree_digest(root) == before
    assert fx.kernel(root) == kernel_before
    calls = fx.calls(root)
    assert mutating([c for c in calls if c != "grubby --info=ALL"]) == []
    assert "persist: wrote" not in r.stdout
    assert "already set" in r.stdout


def test_rerun_while_immutable_changes_no_file(tmp_path, sandbox):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    fx.set_kernel(root, enabled=2)
    run(root, sandbox, target=16384)
    before = fx.tree_digest(root)
    fx.clear_calls(root)
    r = run(root, sandbox, target=16384)
    assert fx.tree_digest(root) == before
    assert mutating(fx.calls(root)) == []
    assert result_line(r.stdout).endswith("method next-boot; lost 0)")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(
    not _unshare_works(), reason="needs a private mount namespace (unshare -m) for a read-only bind mount"
)
@pytest.mark.parametrize("name,ro_dir", [("al2", "etc/audit/rules.d"), ("al1", "etc/audit")])
def test_read_only_rules_dir_still_applies_for_this_boot(tmp_path, sandbox, name, ro_dir):
    root = tmp_path / name
    fx.build(root, name)
    d = root / ro_dir
    env = fx.script_env(root, sandbox, target=8192)
    r = subprocess.run(
        [shutil.which("unshare"), "-m", shutil.which("sh"), "-c",
         '"$1" --bind -o ro "$2" "$2" && exec "$3" "$4"', "_",
         shutil.which("mount"), str(d), str(sandbox / "bash"), str(fx.SCRIPT)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == NOT_PERSISTED, r.stdout + r.stderr
    written = OUR_FILE if name == "al2" else "etc/audit/audit.rules"
    assert f"{PREFIX}persist: cannot write /{written}" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 320 -> 8192 (")
    assert state(root)["persisted"] == "no"
    assert fakes.boot(root)["backlog_limit"] == 320  # nothing persisted: the next boot reverts


# -- exit status: what an SSM association reads (SyncCompliance AUTO: non-zero -> NON_COMPLIANT) ----------


def test_exit_status_is_zero_when_applied_and_persisted_and_on_the_rerun_with_nothing_to_do(
    tmp_path, sandbox
):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = fx.run_script(root, sandbox, target=8192)
    assert r.returncode == OK and result_line(r.stdout).endswith("method auditctl; lost 0)"), r.stdout
    r = fx.run_script(root, sandbox, target=8192)
    assert r.returncode == OK and result_line(r.stdout).endswith("method none; lost 0)"), r.stdout


def test_exit_status_is_zero_when_immutable_and_persisted_for_the_next_boot(tmp_path, sandbox):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    fx.set_kernel(root, enabled=2)
    r = fx.run_script(root, sandbox, target=16384)
    assert r.returncode == OK, r.stdout
    assert f"{PREFIX}immutable: takes effect at next boot" in r.stdout.splitlines()
    assert fx.kernel(root)["backlog_limit"] == 8192 and fakes.boot(root)["backlog_limit"] == 16384


def test_exit_status_is_zero_when_a_larger_limit_is_kept(tmp_path, sandbox):
    root = tmp_path / "debian12"
    fx.build(root, "debian12")
    r = fx.run_script(root, sandbox, target=1024)
    assert r.returncode == OK and f"{PREFIX}persist: kept -b 8192" in r.stdout.splitlines()


def test_exit_status_says_auditctl_is_missing(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404-no-auditd")
    assert fx.run_script(root, sandbox, target=8192).returncode == NO_AUDITCTL


def test_exit_status_says_the_kernel_did_not_take_the_limit(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    cfg = json.loads((root / ".fake/config.json").read_text())
    (root / ".fake/config.json").write_text(json.dumps(dict(cfg, kernel_ignores_b=True)))
    r = fx.run_script(root, sandbox, target=8192)
    assert r.returncode == NOT_APPLIED, r.stdout
    assert f"{PREFIX}verify failed" in r.stdout.splitlines()


def test_exit_status_says_a_later_rules_file_keeps_the_limit_from_persisting(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    late = root / "etc/audit/rules.d/_site-override.rules"
    late.write_text("-b 512\n")
    late.chmod(0o640)
    r = fx.run_script(root, sandbox, target=8192)
    assert r.returncode == NOT_PERSISTED, r.stdout
    assert fx.kernel(root)["backlog_limit"] == 8192  # applied now all the same


def test_exit_status_of_an_unexpected_error_is_non_zero(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/broken.rules").mkdir()  # `cat` of a directory fails inside the script
    r = fx.run_script(root, sandbox, target=8192)
    assert r.returncode not in (OK, NO_AUDITCTL, NOT_APPLIED, NOT_PERSISTED), r.stdout
    assert any(line.startswith(PREFIX + "error ") for line in r.stdout.splitlines())


def test_user_data_ignores_the_exit_status(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404-no-auditd")
    block = render_block(BlockInputs(target=8192))
    r = fx.run_user_data(root, sandbox, _user_data(block, "#!/bin/bash -e"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "user-script-ran"


def test_auto_computes_the_target_from_meminfo(tmp_path, sandbox):
    root = tmp_path / "fedora"
    fx.build(root, "fedora", mem_kib=16_000_000)
    r = run(root, sandbox)  # CAB_TARGET defaults to auto
    # 16,000,000 kB x 1024 x 1 % / 8970 = 18,265 -> 16384
    assert f"{PREFIX}target 16384 (unknown, MemTotal 16000000 kB)" in r.stdout.splitlines()
    assert fakes.boot(root)["backlog_limit"] == 16384


def test_auto_without_meminfo_uses_the_minimum(tmp_path, sandbox):
    root = tmp_path / "fedora"
    fx.build(root, "fedora", mem_kib=None)
    r = run(root, sandbox, min=512)
    assert f"{PREFIX}target 512 (unknown, MemTotal ? kB)" in r.stdout.splitlines()
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit 64 -> 512 (")
    assert r.stderr == ""


def test_wait_time_is_persisted_after_the_distribution_value_and_applied(tmp_path, sandbox):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    assert fx.kernel(root)["backlog_wait_time"] == 60000
    run(root, sandbox, target=16384, wait=15000)
    assert "auditctl --backlog_wait_time 15000" in fx.calls(root)
    assert fx.kernel(root)["backlog_wait_time"] == 15000
    assert (root / OUR_FILE).read_text() == "--backlog_wait_time 15000\n-b 16384\n"
    nxt = fakes.boot(root)
    assert (nxt["backlog_limit"], nxt["backlog_wait_time"]) == (16384, 15000)


def test_wait_time_unsupported_by_auditctl_is_reported_and_left_out(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2", bwt_supported=False)
    r = run(root, sandbox, target=8192, wait=15000)
    assert f"{PREFIX}backlog_wait_time: unsupported by auditctl" in r.stdout.splitlines()
    assert "backlog_wait_time" not in (root / OUR_FILE).read_text()
    assert not any("--backlog_wait_time" in c for c in fx.calls(root))
    assert fakes.boot(root)["backlog_limit"] == 8192  # the rules still load (no unknown option)


def test_wait_time_the_kernel_refuses_is_reported(tmp_path, sandbox):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9", hz=100)  # 10 x 60 x HZ = 60000: 60000 itself is refused
    r = run(root, sandbox, target=8192, wait=60000)
    assert f"{PREFIX}backlog_wait_time 60000 refused" in r.stdout.splitlines()
    assert r.returncode == 0


@pytest.mark.parametrize(
    "name,tool,where",
    [("al2", "grubby", None), ("debian12", "update-grub", "boot/grub/grub.cfg"),
     ("sles15", "grub2-mkconfig", "boot/grub2/grub.cfg")],
)  # fmt: skip
def test_kernel_cmdline_is_set_for_all_kernels(tmp_path, sandbox, name, tool, where):
    root = tmp_path / name
    fx.build(root, name)
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 {tool}" in r.stdout.splitlines()
    if tool == "grubby":
        assert "grubby --update-kernel=ALL --args=audit_backlog_limit=16384" in fx.calls(root)
        entries = sorted((root / "boot/loader/entries").glob("*.conf"))
        assert len(entries) == 2
        for e in entries:
            assert " audit_backlog_limit=16384" in e.read_text()
    else:
        grub = (root / "etc/default/grub").read_text()
        assert 'GRUB_CMDLINE_LINUX=" audit_backlog_limit=16384"' in grub
        assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in grub
        cfg = (root / where).read_text()
        assert "audit_backlog_limit=16384" in cfg


def test_kernel_cmdline_replaces_an_older_value(tmp_path, sandbox):
    root = tmp_path / "debian12"
    fx.build(root, "debian12")
    grub = root / "etc/default/grub"
    grub.write_text(
        grub.read_text().replace(
            'GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="audit_backlog_limit=320 net.ifnames=0"'
        )
    )
    run(root, sandbox, target=16384, kernel_cmdline=1)
    line = [x for x in grub.read_text().splitlines() if x.startswith("GRUB_CMDLINE_LINUX=")]
    assert line == ['GRUB_CMDLINE_LINUX=" net.ifnames=0 audit_backlog_limit=16384"']


def test_kernel_cmdline_is_set_even_without_auditd(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404-no-auditd")
    r = run(root, sandbox, NO_AUDITCTL, target=8192, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=8192 update-grub" in r.stdout.splitlines()
    assert "audit_backlog_limit=8192" in (root / "boot/grub/grub.cfg").read_text()


def test_every_console_line_is_one_decision_with_the_prefix(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = run(root, sandbox, target=8192, source="m5.large/8192MiB", wait=6000, kernel_cmdline=1)
    assert fx.console_lines(r.stdout) == [
        f"{PREFIX}target 8192 (m5.large/8192MiB)",
        f"{PREFIX}persist: wrote /{OUR_FILE}",
        f"{PREFIX}cmdline: audit_backlog_limit=8192 grubby",
        f"{PREFIX}backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)",
    ]
    assert r.stderr == ""


# ----------------------------------------------------------------------- the rendered block in user data


def _user_data(block: str, shebang: str = "#!/bin/bash", extra: str = "") -> str:
    return f"{shebang}\n{block}set -e\n{extra}echo user-script-ran\nexit 0\necho never\n"


@pytest.mark.parametrize("shebang", ["#!/bin/bash", "#!/bin/bash -e", "#!/bin/sh"])
def test_rendered_block_runs_inside_a_set_e_user_script(tmp_path, sandbox, shebang):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB"))
    r = fx.run_user_data(root, sandbox, _user_data(block, shebang))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert out[-1] == "user-script-ran"
    assert f"{PREFIX}backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)" in out
    assert fakes.boot(root)["backlog_limit"] == 8192


def test_user_script_still_runs_after_the_block_fails(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "etc/audit/rules.d/broken.rules").mkdir()  # `cat` of a directory fails inside the block
    block = render_block(BlockInputs(target=8192))
    r = fx.run_user_data(root, sandbox, _user_data(block, "#!/bin/bash -e"))
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "user-script-ran"
    errors = [line for line in r.stdout.splitlines() if line.startswith(PREFIX + "error ")]
    # the ERR trap names the failing line of the block (the rules.d merge), once
    assert len(errors) == 1 and "mb " in errors[0], r.stdout
    assert fx.kernel(root)["backlog_limit"] == 320  # it stopped before applying anything


def test_block_variables_and_traps_do_not_reach_the_user_script(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    block = render_block(BlockInputs(target=8192))
    extra = (
        'test -z "${CAB_TARGET:-}" && test -z "${R:-}" && echo clean-env\ntrap -p ERR | grep -q . && exit 9\n'
    )
    r = fx.run_user_data(root, sandbox, _user_data(block, "#!/bin/bash", extra))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean-env" in r.stdout.splitlines()


def test_rendered_auto_block_with_every_feature_matches_the_script(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    inputs = BlockInputs(backlog_wait_time=6000, kernel_cmdline=True, install_auditd=True, source="unknown")
    r = fx.run_user_data(root, sandbox, _user_data(render_block(inputs)))
    via_block = fx.console_lines(r.stdout)
    root2 = tmp_path / "al2-script"
    fx.build(root2, "al2")
    r2 = run(root2, sandbox, wait=6000, kernel_cmdline=1, install_auditd=1)
    assert via_block == fx.console_lines(r2.stdout)
    assert fx.calls(root) == fx.calls(root2)


# ----------------------------------------------------------- against real tools (make boot-tools)

needs_real_tools = pytest.mark.skipif(
    not fx.real_tools_available(),
    reason="needs Debian's augenrules, gawk and busybox unpacked by `make boot-tools`",
)
AUGENRULES_LAYOUTS = [n for n, lay in fx.LAYOUTS.items() if lay.auditd and lay.loader == "augenrules"]


@needs_real_tools
@pytest.mark.parametrize("name", AUGENRULES_LAYOUTS)
def test_layouts_with_debians_real_augenrules(tmp_path, sandbox, name):
    """Each augenrules layout with the real augenrules of its generation (3.0.9; Debian 13: 4.0.2)."""
    root = tmp_path / name
    fx.build(root, name)
    if fx.layout_generation(root) == "4" and not fx.audit4_tools_available():
        pytest.skip("needs Debian 13's auditd 4.0.2 unpacked by `make boot-tools`")
    fx.use_real_augenrules(root)
    r = run(root, sandbox, target=65536, wait=6000)
    assert result_line(r.stdout).endswith("; method auditctl; lost 0)")
    generated = (root / "etc/audit/audit.rules").read_text().splitlines()
    # the real merge (after its header line) is the fakes' merge, with our -b hoisted to line 3
    assert generated[1:] == fakes.merged_rules(root).splitlines()[1:]
    assert generated[2] == "-b 65536" and generated[-2] == "--backlog_wait_time 6000"
    # the next boot: auditd's start runs the real augenrules --load (No change), then auditctl -R
    fx.clear_calls(root)
    k = fx.kernel(root)
    fx.set_kernel(root, backlog_limit=64, backlog_wait_time=None, enabled=0)
    p = subprocess.run([str(root / "sbin/augenrules"), "--load"], env=fx.script_env(root, sandbox),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "No change" in p.stdout
    nxt = fx.kernel(root)
    assert (nxt["backlog_limit"], nxt["backlog_wait_time"]) == (65536, 6000)
    assert nxt["loads"] == k["loads"] + 1


@needs_real_tools
def test_fake_auditctl_help_behaves_like_the_real_one(tmp_path):
    real = fx.real_auditctl_help()
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    fake = subprocess.run(
        [str(root / "sbin/auditctl"), "-h"], env={"CAB_ROOT": str(root)}, capture_output=True, text=True
    )
    assert real.returncode == fake.returncode == 255
    for r in (real, fake):
        assert re.search(r"^ +--backlog_wait_time +Set the kernel backlog_wait_time$", r.stdout, re.M), (
            r.stdout
        )


@needs_real_tools
def test_wait_time_probe_with_the_real_auditctl_help(tmp_path, sandbox):
    """The probe reads `auditctl -h` of the real auditctl 3.0.9, which exits 255 after its usage text."""
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    fx.use_real_auditctl_help(root)
    r = run(root, sandbox, target=16384, wait=15000)
    assert "unsupported" not in r.stdout
    assert fx.kernel(root)["backlog_wait_time"] == 15000


def _real_status():
    if not fx.real_tools_available():
        return None
    r = subprocess.run([str(fx.REAL_AUDITCTL), "-s"],
                       env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": fx.REAL_LIBS},
                       capture_output=True, text=True, timeout=20)  # fmt: skip
    return r.stdout if r.returncode == 0 else None


@pytest.mark.skipif(
    _real_status() is None, reason="needs the real auditctl and a kernel that answers `auditctl -s`"
)
@pytest.mark.parametrize("awk", ["mawk", "gawk", "busybox"])
def test_status_parser_reads_the_real_auditctl_s(tmp_path, sandbox, awk):
    """`st` on the real (read-only) `auditctl -s` of this machine's kernel, and the fake's format matches."""
    real = _real_status()
    values = dict(line.split(" ", 1) for line in real.splitlines())
    root = tmp_path / "real"
    wrapper = root / "sbin/auditctl"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(
        f'#!/bin/sh\n[ "$*" = -s ] || exit 99\n'
        f'LD_LIBRARY_PATH="{fx.REAL_LIBS}" exec "{fx.REAL_AUDITCTL}" -s\n'
    )
    wrapper.chmod(0o755)
    sb = sandbox if awk == "mawk" else fx.make_awk_sandbox(tmp_path / awk, awk)
    program = _function("st") + 'st\necho "$en|$lo|$bw|$bl"\n'
    out = subprocess.run([str(sb / "bash"), "-euo", "pipefail", "-c", program], env=fx.script_env(root, sb),
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert out == "|".join(values[k] for k in ("enabled", "lost", "backlog_wait_time", "backlog_limit"))
    fake = fakes.status_text(dict(fakes.KERNEL_DEFAULTS, backlog_wait_time=15000), {"version": "3.0.9"})
    assert [line.split(" ")[0] for line in fake.splitlines()] == [
        line.split(" ")[0] for line in real.splitlines()
    ]


@needs_real_tools
def test_debian_fixture_rules_are_debians_shipped_file():
    assert (fx.BOOT_TOOLS / "etc/audit/rules.d/audit.rules").read_text() == fx.DEBIAN_RULES


AWK_SCENARIOS = [
    ("al2", dict(target=8192, source="m5.large/8192MiB")),
    ("al1", dict(target=4096, wait=6000)),
    ("rhel9", dict(target=16384, wait=15000, kernel_cmdline=1)),
    ("debian12", dict(target=1024, kernel_cmdline=1)),
    ("fedora", dict()),
]


@needs_real_tools
@pytest.mark.parametrize("awk", ["gawk", "busybox"])
@pytest.mark.parametrize("name,inputs", AWK_SCENARIOS, ids=[s[0] for s in AWK_SCENARIOS])
def test_same_results_with_gawk_and_busybox_awk(tmp_path, sandbox, awk, name, inputs):
    """RHEL and Amazon Linux have gawk, Debian and Ubuntu mawk (this machine's awk): same results."""
    other = fx.make_awk_sandbox(tmp_path / f"sandbox-{awk}", awk)
    results = []
    for label, sb in (("mawk", sandbox), (awk, other)):
        root = tmp_path / label / name
        fx.build(root, name, **({"status_format": "legacy"} if name == "al1" else {}))
        r = run(root, sb, **inputs)
        files = {
            k: v[0] for k, v in fx.tree_digest(root).items() if not k.startswith("sbin/") and "bin/" not in k
        }
        files = {k: v.replace(str(root).encode(), b"ROOT") for k, v in files.items()}
        results.append((r.stdout, fx.calls(root), files, fx.kernel(root)))
    assert results[0] == results[1]


def _function(name: str) -> str:
    import re

    m = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", fx.SCRIPT.read_text(), re.S | re.M)
    assert m, name
    return m.group(0)


RULE_LINES = st.sampled_from(
    ["-D", "-b 320", "-b 8192", "-b8192", "-b 65536", "-f 1", "-f 2", "-e 2", "-e 1",
     "--backlog_wait_time 60000", "-a task,never", "-a always,exit -F arch=b64 -S openat -k files",
     "-w /etc/passwd -p wa -k identity", "## a comment -b 1", "", "-D -k old"]
)  # fmt: skip
RULE_FILES = st.dictionaries(
    st.sampled_from(["audit.rules", "10-base-config.rules", "99-finalize.rules", "9-x.rules", "Z.rules",
                     "zz.rules", "zzz-site.rules", "zz-cdk-audit-backlog.rules", "_site.rules", "notes.txt",
                     "audit.rules.prev", "30-stig.rules"]),
    st.lists(RULE_LINES, max_size=6),
    max_size=6,
)  # fmt: skip


def _real_merge_b(root, files: dict, sandbox, generation: str = "3") -> str:
    """The -b value in what Debian's real augenrules (3.0.9, or 4.0.2 for generation "4") generates from
    these rules.d files ('' if none)."""
    d = root / "etc/audit/rules.d"
    d.mkdir(parents=True)
    for name, lines in files.items():
        (d / name).write_text("".join(line + "\n" for line in lines))
    fx.use_real_augenrules(root, generation)
    fakes.write_wrapper(root / "sbin/auditctl", "auditctl")
    p = subprocess.run([str(root / "sbin/augenrules")], env=fx.script_env(root, sandbox),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    real_b = [
        line for line in (root / "etc/audit/audit.rules").read_text().splitlines() if line.startswith("-b")
    ]
    assert len(real_b) <= 1
    return str(int(real_b[0][2:])) if real_b else ""


def _script_merge_b(root, sandbox, skip: str, mb_function: str | None = None) -> str:
    program = 'E="$CAB_ROOT/etc/audit"\n' + _function("lb") + (mb_function or _function("mb")) + 'mb "$1"\n'
    return subprocess.run([str(sandbox / "bash"), "-euo", "pipefail", "-c", program, "mb", skip],
                          env=fx.script_env(root, sandbox), capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@needs_real_tools
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=RULE_FILES)
def test_script_merge_agrees_with_the_real_augenrules(tmp_path_factory, sandbox, files):
    """The script's `mb` (the -b that augenrules' merge keeps, with or without our own file) is the
    -b line of what Debian's real augenrules (run with gawk, as on RHEL) generates from the same rules.d."""
    ours = "zz-cdk-audit-backlog.rules"
    if not any(name.endswith(".rules") and name != ours for name in files):
        files = dict(files, **{"audit.rules": ["-D"]})  # augenrules fails on an empty merge ("No rules")
    base = tmp_path_factory.mktemp("merge")
    gawk_sandbox = fx.make_awk_sandbox(base / "sandbox-gawk", "gawk")
    full = base / "full"
    without = base / "without-ours"
    expected_full = _real_merge_b(full, files, gawk_sandbox)
    expected_without = _real_merge_b(without, {k: v for k, v in files.items() if k != ours}, gawk_sandbox)
    for sb in (sandbox, gawk_sandbox):
        assert _script_merge_b(full, sb, ".") == expected_full, files
        assert _script_merge_b(full, sb, ours) == expected_without, files


@needs_real_tools
def test_merge_check_can_fail(tmp_path, sandbox):
    """A merge in plain `ls` order (not -v) disagrees with augenrules: 9-x.rules sorts before 10-y there."""
    files = {"9-x.rules": ["-b 900"], "10-y.rules": ["-b 1000"]}
    root = tmp_path / "m"
    assert _real_merge_b(root, files, sandbox) == "1000"
    assert _script_merge_b(root, sandbox, ".") == "1000"
    wrong = _function("mb").replace("ls -1v", "ls -1")
    assert _script_merge_b(root, sandbox, ".", wrong) == "900"


@pytest.mark.parametrize("name,refused", [("rhel9", True), ("al2", True), ("debian12", False)])
def test_fake_systemctl_refuses_restart_like_refuse_manual_stop(tmp_path, sandbox, name, refused):
    """The fakes emulate what the script must avoid: `systemctl restart auditd` is refused where the unit
    has RefuseManualStop=yes (upstream, RHEL, Amazon Linux), allowed on Debian's unit."""
    root = tmp_path / name
    fx.build(root, name)
    env = fx.script_env(root, sandbox)
    r = subprocess.run(
        [str(root / "usr/bin/systemctl"), "restart", "auditd"], env=env, capture_output=True, text=True
    )
    assert (r.returncode != 0) == refused
    if refused:
        assert "Operation refused" in r.stderr and "refuse manual start/stop" in r.stderr
    fx.set_kernel(root, enabled=2)
    r = subprocess.run([str(root / "sbin/auditctl"), "-b", "9999"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "immutable mode" in r.stderr
    assert fx.kernel(root)["backlog_limit"] != 9999


# ------------------------------------------------------------------ the script's small rules parsers

LINE = st.one_of(
    RULE_LINES,
    st.sampled_from(["  -b 4096", "\t-b\t77", "-b 12 # comment", "--backlog_wait_time 15000", "-e 2", " -D"]),
    st.text(alphabet=st.sampled_from("-abD 0123456789#,=/"), max_size=12),
)


def _run_functions(names: list[str], call: str, stdin: str, *args: str) -> str:
    program = "".join(_function(n) for n in names) + call
    return subprocess.run(["bash", "-euo", "pipefail", "-c", program, "t", *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(st.lists(LINE, max_size=12))
def test_lb_is_the_last_b_line_as_auditctl_reads_it(lines):
    """`lb`: the value of the last line that augenrules treats as -b (optional blanks, then -b)."""
    text = "".join(line + "\n" for line in lines)
    expected = ""
    for line in lines:
        if re.match(r"[ \t]*-b", line):
            token = (line.replace("-b", "", 1).split() or [""])[0]
            number = re.match(r"[-+]?[0-9]+", token)  # awk's numeric prefix ($1+0)
            expected = str(int(number.group(0)) if number else 0)
    assert _run_functions(["lb"], "lb\n", text).strip() == expected


@settings(max_examples=120, deadline=None)
@given(st.lists(LINE, max_size=12), st.sampled_from(["-b", "--backlog_wait_time"]), st.integers(0, 2**31 - 1))
def test_kv_puts_one_key_line_on_top_and_keeps_every_other_line_in_order(lines, key, value):
    text = "".join(line + "\n" for line in lines)
    out = _run_functions(["kv"], 'printf %s "$1" | kv "$2" "$3"\n', "", text.rstrip("\n"), key, str(value))
    got = out.split("\n")[:-1]
    assert got[0] == f"{key} {value}"
    while lines and lines[-1] == "":  # the script reads files with $(cat ...): trailing blank lines go
        lines = lines[:-1]
    kept = [line for line in lines if not (line.split() and line.split()[0].startswith(key))]
    assert got[1:] == kept


# ------------------------------------------- the existing limit: the rules' -b, else the kernel command line

# layout, the rules' -b (None: the rules set none), audit_backlog_limit= on the command line (None: none),
# target, allow_lower -> the persist line, our file's -b (None: no -b line), the limit now, at the next boot
EXISTING_CASES = [
    # the case (Debian 12, rules without -b, booted with 8192): the command line's value is kept
    ("debian12", None, 8192, 1024, 0, "persist: kept -b 8192", None, 8192, 8192),
    # AL2023 with the STIG's fix (grubby --args on every kernel), rules without -b, as shipped
    ("al2023-fedora-file", None, 8192, 1024, 0, "persist: kept -b 8192", None, 8192, 8192),
    ("al2023-fedora-file", None, 8192, 16384, 0, f"persist: wrote /{OUR_FILE}", 16384, 16384, 16384),
    ("al2023-fedora-file", None, 0, 1024, 0, "persist: kept -b 0", None, 0, 0),  # 0: no limit, the largest
    ("al2023-fedora-file", None, 8192, 1024, 1, f"persist: wrote /{OUR_FILE}", 1024, 1024, 1024),
    # the kernel's default 64
    ("al2023-fedora-file", None, None, 1024, 0, f"persist: wrote /{OUR_FILE}", 1024, 1024, 1024),
    # the rules' -b is loaded after the kernel started with the command line's: the rules' value is the one
    # the machine runs (AL2's 320), so it is raised
    ("al2", 320, 8192, 1024, 0, f"persist: wrote /{OUR_FILE}", 1024, 1024, 1024),
    # Amazon Linux 1 (audit.rules loaded as it is) without -b: the command line's value is kept there too
    ("al1", None, 8192, 1024, 0, "persist: kept -b 8192", None, 8192, 8192),
]


@pytest.mark.parametrize("name,rules_b,cmdline,target,allow_lower,persist,ours,now,next_boot", EXISTING_CASES)
def test_existing_limit_is_the_rules_b_else_the_kernel_command_lines(
    tmp_path, sandbox, name, rules_b, cmdline, target, allow_lower, persist, ours, now, next_boot
):
    root = tmp_path / name
    fx.build(root, name)
    if rules_b is None:
        fx.remove_rules_b(root)
    if cmdline is not None:
        fx.add_loader_arg(root, f"audit_backlog_limit={cmdline}")
    before = fakes.boot(root)["backlog_limit"]  # the machine as it runs without us
    assert before == (rules_b if rules_b is not None else cmdline if cmdline is not None else 64)
    fx.clear_calls(root)
    r = run(root, sandbox, target=target, allow_lower=allow_lower)
    assert PREFIX + persist in r.stdout.splitlines()
    mine = root / ("etc/audit/audit.rules" if name == "al1" else OUR_FILE)
    has_b = [
        line for line in (mine.read_text() if mine.exists() else "").splitlines() if line.startswith("-b")
    ]
    assert has_b == ([] if ours is None else [f"-b {ours}"])
    assert fx.kernel(root)["backlog_limit"] == now
    assert result_line(r.stdout).startswith(f"{PREFIX}backlog_limit {before} -> {now} (")
    assert state(root)["persisted"] == "yes"
    assert fakes.boot(root)["backlog_limit"] == next_boot


def test_the_kernel_command_line_is_read_through_the_root_prefix(tmp_path, sandbox):
    """The script reads $R/proc/cmdline (the fixture's), not this machine's: a value only the fixture has
    decides."""
    root = tmp_path / "fedora"
    fx.build(root, "al2023-fedora-file")
    fakes.boot(root, cmdline_limit=131072)  # typed at the boot prompt: on /proc/cmdline, not in the loader
    assert "audit_backlog_limit=131072" in (root / "proc/cmdline").read_text()
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: kept -b 131072" in r.stdout.splitlines()
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz root=UUID=0000 ro\n")
    r = run(root, sandbox, target=8192)
    assert f"{PREFIX}persist: wrote /{OUR_FILE}" in r.stdout.splitlines()


@pytest.mark.parametrize("name", ["al2", "debian12"])
def test_kernel_cmdline_never_replaces_a_larger_value_on_the_command_line(tmp_path, sandbox, name):
    root = tmp_path / name
    fx.build(root, name)
    fx.add_loader_arg(root, "audit_backlog_limit=131072")
    fakes.boot(root)
    fx.clear_calls(root)
    loader = fakes.loader_cmdline(root)
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=131072 already set" in r.stdout.splitlines()
    assert fakes.loader_cmdline(root) == loader
    assert not [
        c for c in fx.calls(root) if c.startswith(("update-grub", "grub2-mkconfig", "grubby --update"))
    ]
    # with allow_lower the smaller value replaces it
    r = run(root, sandbox, target=16384, kernel_cmdline=1, allow_lower=1)
    assert (
        f"{PREFIX}cmdline: audit_backlog_limit=16384 {'grubby' if name == 'al2' else 'update-grub'}"
        in r.stdout
    )
    assert [a for a in fakes.loader_cmdline(root).split() if a.startswith("audit_backlog_limit=")][-1] == (
        "audit_backlog_limit=16384"
    )


# ------------------------------------------------ GRUB: where the command-line step writes, and the read-back

CLOUD_DROP_IN = "etc/default/grub.d/50-cloudimg-settings.cfg"
OUR_DROP_IN = "etc/default/grub.d/zz-cdk-audit-backlog.cfg"


def _cloud_drop_in(root, text: str) -> None:
    """A cloud image's GRUB drop-in (Ubuntu's 50-cloudimg-settings.cfg sets the command line again)."""
    p = root / CLOUD_DROP_IN
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    fx.regenerate_grub(root)
    fx.clear_calls(root)


def _linux_lines(root) -> list[str]:
    return [
        x for x in (root / "boot/grub/grub.cfg").read_text().splitlines() if x.strip().startswith("linux")
    ]


def test_a_drop_in_that_sets_the_command_line_again_does_not_hide_ours(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404")
    _cloud_drop_in(root, 'GRUB_CMDLINE_LINUX="console=ttyS0 nvme_core.io_timeout=4294967295"\n')
    main = (root / "etc/default/grub").read_text()
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 update-grub" in r.stdout.splitlines()
    assert (root / "etc/default/grub").read_text() == main  # the main file is left alone
    assert (
        root / OUR_DROP_IN
    ).read_text() == 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX audit_backlog_limit=16384"\n'
    for line in _linux_lines(root):
        assert "console=ttyS0 nvme_core.io_timeout=4294967295 audit_backlog_limit=16384" in line
    assert fakes.boot(root, before_auditd=None)["backlog_limit"] == 16384  # the rules load it too
    assert "audit_backlog_limit=16384" in (root / "proc/cmdline").read_text().split()
    # a rerun: nothing written, nothing regenerated
    before = fx.tree_digest(root)
    fx.clear_calls(root)
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 already set" in r.stdout.splitlines()
    assert fx.tree_digest(root) == before and "update-grub" not in fx.calls(root)


def test_an_edit_of_the_main_file_alone_would_be_hidden_by_that_drop_in(tmp_path, sandbox):
    """The check above can fail: 0.1's edit of /etc/default/grub only, under the same drop-in, does not
    reach grub.cfg."""
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404")
    _cloud_drop_in(root, 'GRUB_CMDLINE_LINUX="console=ttyS0"\n')
    fx.add_loader_arg(root, "audit_backlog_limit=16384")  # the main file's GRUB_CMDLINE_LINUX, regenerated
    assert "audit_backlog_limit=16384" in (root / "etc/default/grub").read_text()
    assert not any("audit_backlog_limit" in line for line in _linux_lines(root))


def test_a_main_file_without_a_grub_cmdline_linux_line_gets_one(tmp_path, sandbox):
    root = tmp_path / "debian12"
    fx.build(root, "debian12")
    grub = root / "etc/default/grub"
    grub.write_text(grub.read_text().replace('GRUB_CMDLINE_LINUX=""\n', ""))
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 update-grub" in r.stdout.splitlines()
    assert grub.read_text().splitlines()[-1] == 'GRUB_CMDLINE_LINUX=" audit_backlog_limit=16384"'
    assert all(line.split()[-2:] == ["audit_backlog_limit=16384", "quiet"] for line in _linux_lines(root))


def test_a_value_the_next_boot_does_not_get_is_reported_not_applied(tmp_path, sandbox):
    """A drop-in whose GRUB_CMDLINE_LINUX_DEFAULT (after GRUB_CMDLINE_LINUX on the linux line: the kernel
    keeps the last) sets its own value: the read-back of grub.cfg says so."""
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2204")
    _cloud_drop_in(root, 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0 audit_backlog_limit=320"\n')
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 update-grub, not applied" in r.stdout.splitlines()


@pytest.mark.parametrize(
    "name,tool", [("debian12", "update-grub"), ("sles15", "grub2-mkconfig"), ("al2", "grubby")]
)
def test_a_regeneration_that_does_nothing_is_reported_not_applied(tmp_path, sandbox, name, tool):
    """0.1 named update-grub as done whatever it did: a tool that exits 0 and writes nothing is caught."""
    root = tmp_path / name
    fx.build(root, name)
    path = root / "usr/sbin" / tool
    real = path.read_text()
    # grubby still answers --info=ALL; every tool ignores what would change the next boot
    path.write_text(real.replace('exec ', 'case "$*" in --info*) ;; *) exit 0;; esac\nexec ', 1))
    r = run(root, sandbox, target=16384, kernel_cmdline=1)
    assert f"{PREFIX}cmdline: audit_backlog_limit=16384 {tool}, not applied" in r.stdout.splitlines()
    assert "audit_backlog_limit" not in (root / "proc/cmdline").read_text()


# --------------------------------------------------------------- a rules file that sorts after ours

def _boot_with_real_augenrules(root, sandbox) -> dict:
    """A boot whose rule load is the real augenrules --load (a fresh kernel; the load runs the fixture's
    auditctl -R); returns the kernel state."""
    fx.set_kernel(root, **dict(fakes.KERNEL_DEFAULTS, rules=[]))
    p = subprocess.run([str(root / "sbin/augenrules"), "--load"], env=fx.script_env(root, sandbox),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return fx.kernel(root)


@needs_real_tools
@pytest.mark.parametrize(
    "late,late_b,target,loads,line,status",
    [
        # ls -1v puts letters before other characters: zzz-site.rules sorts BEFORE zz-cdk-audit-backlog.rules
        ("zzz-site.rules", 512, 8192, 8192, None, 0),
        # these sort after ours and win augenrules' merge: reported, not fought (docs/design.md)
        ("zz-site.rules", 512, 8192, 512, "persist: rules load -b 512", 5),
        ("_site.rules", 512, 8192, 512, "persist: rules load -b 512", 5),
        # a larger one is the existing limit, kept: never lowered, nothing to report
        ("zz-site.rules", 65536, 8192, 65536, "persist: kept -b 65536", 0),
    ],
)  # fmt: skip
def test_a_later_rules_file_with_debians_real_augenrules(
    tmp_path, sandbox, late, late_b, target, loads, line, status
):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    fx.use_real_augenrules(root)
    (root / "etc/audit/rules.d" / late).write_text(f"-b {late_b}\n")
    (root / "etc/audit/rules.d" / late).chmod(0o640)
    _boot_with_real_augenrules(root, sandbox)
    fx.clear_calls(root)
    r = fx.run_script(root, sandbox, target=target)
    assert r.returncode == status, r.stdout + r.stderr
    if line:
        assert PREFIX + line in r.stdout.splitlines()
    assert [x for x in (root / "etc/audit/audit.rules").read_text().splitlines() if x.startswith("-b")] == [
        f"-b {loads}"
    ]
    assert (root / f"etc/audit/rules.d/{late}").read_text() == f"-b {late_b}\n"  # theirs is never edited
    assert _boot_with_real_augenrules(root, sandbox)["backlog_limit"] == loads  # the real merge, loaded
    assert state(root)["persisted"] == ("no" if status else "yes")
