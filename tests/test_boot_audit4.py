"""The boot script on the audit 4 generation (Debian 13's auditd 4.0.2, the userspace of RHEL 10, Fedora and
new distributions), against the real package that `make boot-tools` unpacks (nothing installed).

What changed from 3.x, and what each test pins down:
- the rules are loaded by a unit of their own, ``audit-rules.service`` (``augenrules --load``), which
  ``auditd.service`` requires; ``auditd.service`` has no ``ExecStartPost`` any more (the fixture layout
  ``debian13`` follows the real units, checked here);
- augenrules 4.0.2 checks ``auditctl -s`` for immutable mode itself and strips CR from rules lines; the
  script's own merge (``mb``) must still agree with it;
- ``auditctl -h`` still exits 255 after its usage text, and ``auditctl -s`` prints the same keys;
- Debian 13 still ships the four-line ``rules.d/audit.rules`` (``-b 8192``).
Tests skip (with the reason) where `make boot-tools` could not fetch the package.
"""

from __future__ import annotations

import configparser
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings

from tests.boot import fakes
from tests.boot import fixtures as fx
from tests.test_boot_script import (
    OUR_FILE,
    PREFIX,
    RULE_FILES,
    _function,
    _real_merge_b,
    _script_merge_b,
    assert_no_reload,
    mutating,
    result_line,
    run,
    state,
)

pytestmark = pytest.mark.skipif(
    not (fx.audit4_tools_available() and fx.real_tools_available()),
    reason="needs Debian 13's auditd 4.0.2 (and Debian 12's tools) unpacked by `make boot-tools`",
)


# Declared here rather than imported from test_boot_script: an imported fixture is an unused import that the
# tests' parameters then shadow. pytest gave this module its own instance of the imported one all the same.
@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


def _unit(path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    unit.optionxform = str  # keys are case-sensitive in systemd units
    unit.read_string(path.read_text())
    return unit


def test_the_package_is_auditd_4_0_2_and_ships_debians_four_line_rules():
    assert fx.AUDIT4_VERSION_FILE.read_text().strip().startswith("1:4.0.2-")
    assert (fx.AUDIT4_TOOLS / "etc/audit/rules.d/audit.rules").read_text() == fx.DEBIAN_RULES


def test_audit4_loads_rules_in_audit_rules_service_and_the_fixture_layout_says_so():
    units = fx.AUDIT4_TOOLS / "usr/lib/systemd/system"
    rules, auditd = _unit(units / "audit-rules.service"), _unit(units / "auditd.service")
    assert rules["Service"]["Type"] == "oneshot"
    assert rules["Service"]["ExecStart"] == "/usr/sbin/augenrules --load"
    assert rules["Unit"]["DefaultDependencies"] == "no"
    assert "audit-rules.service" in auditd["Unit"]["Requires"].split()
    assert "audit-rules.service" in auditd["Unit"]["After"].split()
    assert "ExecStartPost" not in auditd["Service"]
    # Debian 13's unit, like Debian 12's, does not refuse a manual stop (upstream's 3.x unit did).
    assert "RefuseManualStop" not in auditd["Unit"]
    layout = fx.LAYOUTS["debian13"]
    assert (layout.rules_service, layout.refuse_manual_stop, layout.loader) == (
        "audit-rules",
        False,
        "augenrules",
    )
    # ... and Debian 12's 3.0.9 unit is the other generation: the load is auditd.service's ExecStartPost.
    old = _unit(fx.BOOT_TOOLS / "lib/systemd/system/auditd.service")
    assert old["Service"]["ExecStartPost"] == "-/sbin/augenrules --load"
    assert fx.LAYOUTS["debian12"].rules_service == "auditd"


def test_fake_boot_loads_the_rules_once_before_auditd_starts(tmp_path):
    """The fixture's boot on the audit 4 layout: audit-rules.service loads, auditd.service only starts
    (and a restart of auditd alone no longer reloads the rules, unlike Debian 12's ExecStartPost)."""
    for name, reloads in (("debian13", 0), ("debian12", 1)):
        root = tmp_path / name
        fx.build(root, name)
        k = fx.kernel(root)
        assert (k["backlog_limit"], k["pid"], k["loads"]) == (8192, 4242, 1)
        r = subprocess.run([str(root / "usr/bin/systemctl"), "restart", "auditd"],
                           env={"CAB_ROOT": str(root)}, capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert fx.kernel(root)["loads"] == 1 + reloads


def test_debian13_with_the_real_augenrules_4_raises_persists_and_the_next_boot_loads_it(tmp_path, sandbox):
    root = tmp_path / "debian13"
    fx.build(root, "debian13")
    fx.use_real_augenrules(root)
    assert "check_immutable" in (root / "sbin/augenrules").read_text()  # really the 4.0.2 script
    r = run(root, sandbox, target=65536, wait=6000, source="r5.4xlarge/131072MiB")
    assert (
        result_line(r.stdout)
        == f"{PREFIX}backlog_limit 8192 -> 65536 (r5.4xlarge/131072MiB; method auditctl; lost 0)"
    )
    assert_no_reload(root, fx.calls(root))
    # (the real augenrules regenerated audit.rules; it logs no call of its own, only its `auditctl -s`)
    assert mutating(fx.calls(root)) == ["auditctl -b 65536", "auditctl --backlog_wait_time 6000"]
    generated = (root / "etc/audit/audit.rules").read_text()
    assert generated.splitlines()[1:] == fakes.merged_rules(root).splitlines()[1:]
    assert generated.splitlines()[2] == "-b 65536"
    # Next boot: audit-rules.service runs the real augenrules --load ("No change"), then auditd starts.
    fx.clear_calls(root)
    fx.set_kernel(root, backlog_limit=64, backlog_wait_time=None, enabled=0, pid=0)
    p = subprocess.run([str(root / "sbin/augenrules"), "--load"], env=fx.script_env(root, sandbox),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "No change" in p.stdout
    k = fx.kernel(root)
    assert (k["backlog_limit"], k["backlog_wait_time"]) == (65536, 6000)


def _boot_with_real_augenrules(root, sandbox) -> dict:
    """A boot of the fixture whose audit-rules.service runs the real augenrules --load: a fresh kernel, the
    real script's merge and load (through the fixture's auditctl -R); returns the kernel state."""
    fx.set_kernel(root, **dict(fakes.KERNEL_DEFAULTS, rules=[]))
    p = subprocess.run([str(root / "sbin/augenrules"), "--load"], env=fx.script_env(root, sandbox),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return fx.kernel(root)


def test_immutable_on_audit4_persists_and_the_real_augenrules_loads_it_next_boot(tmp_path, sandbox):
    """`-e 2` in rules.d (loaded by audit-rules.service): the block cannot change the kernel, writes its file,
    and skips the regeneration (augenrules 4.0.2 would exit on immutable anyway); at the next boot the real
    augenrules merges our -b before the -e 2 and loads it."""
    root = tmp_path / "debian13"
    fx.build(root, "debian13")
    fx.use_real_augenrules(root)
    (root / "etc/audit/rules.d/99-finalize.rules").write_text("-e 2\n")
    _boot_with_real_augenrules(root, sandbox)
    fx.clear_calls(root)
    assert fx.kernel(root)["enabled"] == 2
    r = run(root, sandbox, target=16384, source="m5.xlarge/16384MiB")
    assert f"{PREFIX}immutable: takes effect at next boot" in r.stdout.splitlines()
    assert mutating(fx.calls(root)) == []
    assert (root / OUR_FILE).read_text() == "-b 16384\n"
    assert state(root)["persisted"] == "yes"
    # The real 4.0.2 augenrules, run now, refuses to touch anything (its own immutable check) ...
    before = (root / "etc/audit/audit.rules").read_text()
    p = subprocess.run(
        [str(root / "sbin/augenrules")], env=fx.script_env(root, sandbox), capture_output=True, text=True
    )
    assert p.returncode == 0 and "immutable mode" in p.stdout, p.stdout
    assert (root / "etc/audit/audit.rules").read_text() == before
    # ... and at the next boot it merges and loads our -b, with -e 2 still last.
    nxt = _boot_with_real_augenrules(root, sandbox)
    assert (nxt["backlog_limit"], nxt["enabled"]) == (16384, 2)
    assert (root / "etc/audit/audit.rules").read_text().rstrip("\n").splitlines()[-1] == "-e 2"


def test_real_auditctl_4_help_exits_255_and_lists_backlog_wait_time():
    for generation in ("3", "4"):
        h = fx.real_auditctl_help(generation)
        assert h.returncode == 255, (generation, h.returncode)
        assert "--backlog_wait_time" in h.stdout + h.stderr


def test_wait_time_probe_with_the_real_auditctl_4_help(tmp_path, sandbox):
    root = tmp_path / "debian13"
    fx.build(root, "debian13")
    fx.use_real_auditctl_help(root, "4")
    r = run(root, sandbox, target=16384, wait=15000)
    assert "unsupported" not in r.stdout
    assert fx.kernel(root)["backlog_wait_time"] == 15000


def _status(generation: str) -> str | None:
    r = fx.real_auditctl("-s", generation=generation)
    return r.stdout if r.returncode == 0 else None


@pytest.mark.skipif(_status("4") is None if fx.audit4_tools_available() else True,
                    reason="needs a kernel that answers `auditctl -s`")  # fmt: skip
def test_auditctl_4_status_has_the_same_keys_and_the_parser_reads_it(tmp_path, sandbox):
    real4, real3 = _status("4"), _status("3")
    assert [line.split(" ")[0] for line in real4.splitlines()] == [
        line.split(" ")[0] for line in real3.splitlines()
    ]
    values = dict(line.split(" ", 1) for line in real4.splitlines())
    root = tmp_path / "real4"
    wrapper = root / "sbin/auditctl"
    wrapper.parent.mkdir(parents=True)
    argv = " ".join(f'"{a}"' for a in fx.real_auditctl_command("4"))
    wrapper.write_text(f'#!/bin/sh\n[ "$*" = -s ] || exit 99\nexec {argv} -s\n')
    wrapper.chmod(0o755)
    program = _function("st") + 'st\necho "$en|$lo|$bw|$bl"\n'
    out = subprocess.run([str(sandbox / "bash"), "-euo", "pipefail", "-c", program],
                         env=fx.script_env(root, sandbox), capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    assert out == "|".join(values[k] for k in ("enabled", "lost", "backlog_wait_time", "backlog_limit"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=RULE_FILES)
def test_script_merge_agrees_with_the_real_augenrules_4(tmp_path_factory, sandbox, files):
    """`mb` against augenrules 4.0.2's merge (same order and hoisting as 3.0.9, plus CR stripping)."""
    ours = "zz-cdk-audit-backlog.rules"
    if not any(name.endswith(".rules") and name != ours for name in files):
        files = dict(files, **{"audit.rules": ["-D"]})
    base = tmp_path_factory.mktemp("merge4")
    full, without = base / "full", base / "without-ours"
    expected_full = _real_merge_b(full, files, sandbox, "4")
    expected_without = _real_merge_b(without, {k: v for k, v in files.items() if k != ours}, sandbox, "4")
    assert _script_merge_b(full, sandbox, ".") == expected_full, files
    assert _script_merge_b(full, sandbox, ours) == expected_without, files


def test_crlf_rules_files_merge_alike_in_the_script_and_augenrules_4(tmp_path, sandbox):
    """A rules file saved with CRLF line ends (4.0.2 strips the CR, 3.0.9 keeps it): the -b both read."""
    files = {"audit.rules": ["-D", "-b 320\r", "-f 1\r"], "zz-site.rules": ["-b 2048\r"]}
    assert _real_merge_b(tmp_path / "m", files, sandbox, "4") == "2048"
    assert _script_merge_b(tmp_path / "m", sandbox, ".") == "2048"
