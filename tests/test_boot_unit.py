"""The boot unit (cdk-audit-backlog.service) that userdata/audit-backlog.sh installs, on fixture roots.

The real script runs as user data (the rendered block, as cloud-init runs it) or standalone in ``install``
mode; a later boot is emulated as systemd would run it: fresh kernel state, then the installed unit's own
``ExecStart`` (only if it is wanted by the unit that loads the rules), then auditd's start (augenrules
--load). Fakes and fixtures: tests/boot/. ``systemd-analyze verify`` checks the unit file against Debian's
real auditd.service and audit 4's audit-rules.service.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cdk_audit_backlog.user_data import BlockInputs, render_block
from tests.boot import fakes
from tests.boot import fixtures as fx

PREFIX = "cdk-audit-backlog: "
OUR_FILE = "etc/audit/rules.d/zz-cdk-audit-backlog.rules"
UNIT = "etc/systemd/system/cdk-audit-backlog.service"
SCRIPT = "usr/local/sbin/cdk-audit-backlog"
ENV = "etc/cdk-audit-backlog.env"
WANTS = ("etc/systemd/system/auditd.service.wants", "etc/systemd/system/audit-rules.service.wants")
GIB_1 = 980_000  # MemTotal (kB) of a 1 GiB machine -> 1024
GIB_8 = 8_006_068  # of an 8 GiB machine -> 8192
GIB_64 = 64_000_000  # -> 65536


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


def set_memory(root: Path, kib: int) -> None:
    (root / "proc/meminfo").write_text(f"MemTotal:       {kib} kB\nMemFree:         1000 kB\n")


def user_data(**inputs) -> str:
    """A user script with the block, as the aspect renders it (boot unit on unless told otherwise)."""
    inputs.setdefault("boot_unit", "auto")
    return "#!/bin/bash\n" + render_block(BlockInputs(**inputs)) + "echo user-line\n"


def unit_exec_start(root: Path) -> list[str]:
    lines = (root / UNIT).read_text().splitlines()
    (cmd,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    return shlex.split(cmd)


def reboot(root: Path, sandbox: Path, mem_kib: int) -> tuple[dict, str]:
    """A later boot with ``mem_kib`` of memory: systemd starts the unit (when auditd.service wants it)
    before auditd, whose start loads the rules. Returns the kernel after the rules loaded and the unit's
    output ("" when the unit did not run)."""
    set_memory(root, mem_kib)
    out = []

    def unit():
        if not (root / WANTS[0] / "cdk-audit-backlog.service").is_symlink():
            return
        argv = unit_exec_start(root)
        assert argv[0] == "/bin/bash", argv
        # systemd runs /bin/bash /usr/local/sbin/cdk-audit-backlog boot; here the path is under the root
        r = subprocess.run(
            [str(sandbox / "bash"), str(root / argv[1].lstrip("/")), *argv[2:]],
            env=fx.script_env(root, sandbox),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out.append(r.stdout)

    fx.clear_calls(root)
    k = fakes.boot(root, before_auditd=unit)
    return k, "".join(out)


def said(stdout: str) -> list[str]:
    return [line[len(PREFIX) :] for line in stdout.splitlines() if line.startswith(PREFIX)]


def our_b(root: Path) -> str:
    return (root / OUR_FILE).read_text() if (root / OUR_FILE).exists() else ""


# -- what gets installed -----------------------------------------------------------------------------------


def test_unit_file_orders_before_both_rule_loaders_and_runs_the_installed_script(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    text = user_data(target=8192, source="m5.large/8192MiB")
    r = fx.run_user_data_ok(root, sandbox, text)
    assert "unit: installed (boot target auto)" in said(r.stdout)
    unit = (root / UNIT).read_text().splitlines()
    assert unit == [
        "[Unit]",
        "Description=cdk-audit-backlog: size the audit backlog before the audit rules load",
        # auditd.service and audit-rules.service run before sysinit.target: default dependencies (which
        # order a service after sysinit.target) would make a cycle; audit-rules.service's own After= instead.
        "DefaultDependencies=no",
        "After=local-fs.target systemd-tmpfiles-setup.service",
        "Before=auditd.service audit-rules.service shutdown.target",
        "Conflicts=shutdown.target",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/bin/bash /usr/local/sbin/cdk-audit-backlog boot",
        "StandardOutput=journal+console",
        "[Install]",
        "WantedBy=auditd.service audit-rules.service",
    ]
    # enabled as `systemctl enable` would: a link in each WantedBy= unit's .wants directory
    for wants in WANTS:
        link = root / wants / "cdk-audit-backlog.service"
        assert link.is_symlink() and os.readlink(link) == "/" + UNIT
    # the installed script is the block's own body, byte for byte (one source, not a copy of its logic)
    assert (root / SCRIPT).read_text() == fx.block_body(text)
    # the unit's inputs: auto, because the aspect chose 8192 from the instance type; same policy
    assert (root / ENV).read_text().splitlines() == [
        "CAB_TARGET=auto",
        "CAB_FRACTION_PPM=10000",
        "CAB_MIN=320",
        "CAB_MAX=262144",
        "CAB_WAIT=",
        "CAB_KERNEL_CMDLINE=0",
        "CAB_INSTALL_AUDITD=0",
        "CAB_ALLOW_LOWER=0",
        "CAB_SOURCE=boot",
    ]
    for rel in (UNIT, SCRIPT, ENV):
        st = (root / rel).stat()
        assert st.st_uid == os.getuid() and st.st_mode & 0o027 == 0, (rel, oct(st.st_mode))
    # nothing is started, reloaded or restarted now (the unit is for the next boots)
    assert not [c for c in fx.calls(root) if c.startswith(("systemctl", "service", "augenrules --load"))]
    # the temporary file the block ran from is gone
    assert not any(p.name.startswith("tmp.") for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("tmp.*")
                   if p.is_file() and p.read_text(errors="replace") == fx.block_body(text))


def test_rerunning_the_user_data_installs_nothing_twice(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    text = user_data(target=8192, source="m5.large/8192MiB")
    fx.run_user_data_ok(root, sandbox, text)
    before = fx.tree_digest(root)
    r = fx.run_user_data_ok(root, sandbox, text)
    assert "unit: up to date (boot target auto)" in said(r.stdout)
    assert fx.tree_digest(root) == before  # same content, mode and mtime: nothing written
    links = [p for p in (root / "etc/systemd/system").rglob("*") if p.name == "cdk-audit-backlog.service"]
    assert len(links) == 3  # the unit and one link per WantedBy=


def test_install_mode_installs_the_unit_and_exits(tmp_path, sandbox):
    """``audit-backlog.sh install`` (an image build step): the unit, its inputs and the script, nothing
    else."""
    root = tmp_path / "al2"
    fx.build(root, "al2")
    rules_before = {p: p.read_text() for p in (root / "etc/audit").rglob("*") if p.is_file()}
    r = fx.run_script(root, sandbox, target="auto", args=("install",))
    assert r.returncode == 0, r.stdout + r.stderr
    assert said(r.stdout) == ["unit: installed (boot target auto)"]
    assert {p: p.read_text() for p in (root / "etc/audit").rglob("*") if p.is_file()} == rules_before
    assert fx.calls(root) == []  # not even auditctl -s
    assert (root / SCRIPT).read_text() == fx.SCRIPT.read_text()  # the full script, as shipped
    assert (root / ENV).read_text().startswith("CAB_TARGET=auto\n")
    # the next boot sizes the limit before the rules load
    k, out = reboot(root, sandbox, GIB_8)
    assert k["backlog_limit"] == 8192 and said(out)[-1].startswith("backlog_limit 64 -> 8192 (boot, MemTotal")


def test_install_mode_keeps_a_fixed_target_and_reports_a_host_without_systemd(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = fx.run_script(root, sandbox, target=16384, args=("install",))
    assert r.returncode == 0 and said(r.stdout) == ["unit: installed (boot target 16384)"]
    k, _ = reboot(root, sandbox, GIB_1)
    assert k["backlog_limit"] == 16384
    root = tmp_path / "al1"
    fx.build(root, "al1")
    r = fx.run_script(root, sandbox, target="auto", args=("install",))
    # exit status 6: an image build step fails loudly rather than shipping an image without the unit
    assert r.returncode == 6 and said(r.stdout) == [
        "unit: not installed (needs systemd, augenrules, a script file)"
    ]


def test_unknown_mode_is_refused(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = fx.run_script(root, sandbox, target="auto", args=("reboot",))
    assert r.returncode == 2 and said(r.stdout) == ["unknown mode reboot (apply, boot, install)"]
    assert fx.calls(root) == []


# -- every later boot --------------------------------------------------------------------------------------


def test_a_resize_resizes_our_own_file_both_ways_before_the_rules_load(tmp_path, sandbox):
    """m5.large user data at 8 GiB, then the same disk at 1 GiB, 8 GiB, 64 GiB: the unit rewrites only our
    own file, from MemTotal, before auditd's start loads the rules (no auditctl -b: no race)."""
    root = tmp_path / "al2"
    fx.build(root, "al2")
    fx.run_user_data_ok(root, sandbox, user_data(target=8192, source="m5.large/8192MiB"))
    assert our_b(root) == "-b 8192\n"
    shipped = (root / "etc/audit/rules.d/audit.rules").read_text()
    for mem, want, old in ((GIB_1, 1024, 8192), (GIB_8, 8192, 1024), (GIB_64, 65536, 8192)):
        k, out = reboot(root, sandbox, mem)
        assert k["backlog_limit"] == want  # in force from auditd's first (and only) rule load
        assert k["loads"] == 1
        assert our_b(root) == f"-b {want}\n"
        assert said(out) == [
            f"target {want} (boot, MemTotal {mem} kB)",
            "persist: wrote /" + OUR_FILE,
            f"backlog_limit 64 -> {want} (boot, MemTotal {mem} kB; method rules; lost 0)",
        ], old
        # the unit's own calls (auditd's start is emulated in-process): a status read and the no-load
        # regeneration of audit.rules; no auditctl -b, no load
        assert fx.calls(root) == ["auditctl -s", "augenrules"]
        assert (root / "etc/audit/rules.d/audit.rules").read_text() == shipped  # the distribution's file
    # the same memory again: nothing to write, the state file is left alone
    state = (root / "var/lib/cdk-audit-backlog/state").stat().st_mtime_ns
    k, out = reboot(root, sandbox, GIB_64)
    assert k["backlog_limit"] == 65536 and "persist: wrote /" + OUR_FILE not in said(out)
    assert said(out)[-1] == f"backlog_limit 64 -> 65536 (boot, MemTotal {GIB_64} kB; method none; lost 0)"
    assert (root / "var/lib/cdk-audit-backlog/state").stat().st_mtime_ns == state


def test_the_distributions_larger_limit_is_kept_at_boot(tmp_path, sandbox):
    """Debian ships -b 8192: a t3.micro block, then a 1 GiB boot, never lowers it; our file is not made."""
    root = tmp_path / "debian12"
    fx.build(root, "debian12", mem_kib=GIB_1)
    fx.run_user_data_ok(root, sandbox, user_data(target=1024, source="t3.micro/1024MiB"))
    before = fx.tree_digest(root)
    k, out = reboot(root, sandbox, GIB_1)
    assert k["backlog_limit"] == 8192
    assert "persist: kept -b 8192" in said(out)
    assert not (root / OUR_FILE).exists()
    after = fx.tree_digest(root)
    assert {p: v for p, v in after.items() if p != "proc/meminfo"} == {
        p: v for p, v in before.items() if p != "proc/meminfo"
    }


def test_our_own_earlier_value_is_emptied_when_the_distribution_covers_the_new_memory(tmp_path, sandbox):
    """Our 16384 from a 16 GiB boot on Debian; at 1 GiB the shipped 8192 is larger than 1024, so our file
    no longer raises anything: it is emptied and the rules load Debian's 8192 (resized down, not below)."""
    root = tmp_path / "debian12"
    fx.build(root, "debian12", mem_kib=16_200_000)
    fx.run_user_data_ok(root, sandbox, user_data(target=16384, source="c5.2xlarge/16384MiB"))
    assert our_b(root) == "-b 16384\n"
    k, out = reboot(root, sandbox, GIB_1)
    assert k["backlog_limit"] == 8192 and our_b(root) == "\n"
    assert "persist: kept -b 8192" in said(out)


def _stig_debian(root: Path) -> None:
    """Debian 12 as the issue found it on a real kernel: rules without -b, and audit_backlog_limit=8192 on
    the kernel command line (here in GRUB_CMDLINE_LINUX and grub.cfg, as the STIG/CIS fix puts it)."""
    fx.build(root, "debian12", mem_kib=GIB_1)
    fx.remove_rules_b(root)
    fx.add_loader_arg(root, "audit_backlog_limit=8192")
    assert fakes.boot(root)["backlog_limit"] == 8192
    fx.clear_calls(root)


def test_a_command_line_limit_is_kept_by_the_block_and_by_the_unit_on_every_boot(tmp_path, sandbox):
    """The t3.micro block (1024) on that machine: kept 8192, no -b 1024 in our file, and the unit's next
    boots say 8192 -> 8192 (0.1.x: -b 1024 written, and the unit reported 8192 -> 1024)."""
    root = tmp_path / "debian12"
    _stig_debian(root)
    r = fx.run_user_data_ok(root, sandbox, user_data(target=1024, source="t3.micro/1024MiB"))
    assert "persist: kept -b 8192" in said(r.stdout)
    assert said(r.stdout)[-1] == "backlog_limit 8192 -> 8192 (t3.micro/1024MiB; method none; lost 0)"
    assert "-b" not in our_b(root)
    for _ in range(2):
        k, out = reboot(root, sandbox, GIB_1)
        assert k["backlog_limit"] == 8192
        assert said(out) == [
            f"target 1024 (boot, MemTotal {GIB_1} kB)",
            "persist: kept -b 8192",
            f"backlog_limit 8192 -> 8192 (boot, MemTotal {GIB_1} kB; method none; lost 0)",
        ]
        assert "-b" not in our_b(root)
    # a resize above it still raises: the unit writes 65536, which the rules load after the command line's
    k, out = reboot(root, sandbox, GIB_64)
    assert k["backlog_limit"] == 65536 and our_b(root) == "-b 65536\n"


def test_install_mode_unit_keeps_a_command_line_limit(tmp_path, sandbox):
    """The image-build path: `install` only, then the unit on the first boot of that image."""
    root = tmp_path / "debian12"
    _stig_debian(root)
    r = fx.run_script(root, sandbox, target="auto", args=("install",))
    assert r.returncode == 0, r.stdout + r.stderr
    k, out = reboot(root, sandbox, GIB_1)
    assert k["backlog_limit"] == 8192 and "persist: kept -b 8192" in said(out)
    assert said(out)[-1].startswith("backlog_limit 8192 -> 8192 (boot, MemTotal")


def test_allow_lower_lets_the_unit_lower_the_distributions_limit(tmp_path, sandbox):
    root = tmp_path / "debian12"
    fx.build(root, "debian12")
    fx.run_user_data_ok(root, sandbox, user_data(target=8192, source="m5.large/8192MiB", allow_lower=True))
    k, _ = reboot(root, sandbox, GIB_1)
    assert k["backlog_limit"] == 1024 and our_b(root) == "-b 1024\n"


def test_a_limit_the_user_fixed_stays_fixed_across_a_resize(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = fx.run_user_data_ok(root, sandbox, user_data(target=16384, boot_unit="fixed"))
    assert "unit: installed (boot target 16384)" in said(r.stdout)
    assert (root / ENV).read_text().startswith("CAB_TARGET=16384\n")
    for mem in (GIB_1, GIB_64):
        k, out = reboot(root, sandbox, mem)
        assert k["backlog_limit"] == 16384 and said(out)[0] == "target 16384 (boot)"


def test_wait_time_is_persisted_by_the_unit_too(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    text = user_data(target=8192, source="m5.large/8192MiB", backlog_wait_time=60000)
    fx.run_user_data_ok(root, sandbox, text)
    k, _ = reboot(root, sandbox, GIB_1)
    assert our_b(root) == "--backlog_wait_time 60000\n-b 1024\n"
    assert k["backlog_limit"] == 1024 and k["backlog_wait_time"] == 60000


def test_the_unit_never_touches_the_kernel_command_line_or_installs_packages(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2204")
    fx.run_user_data_ok(root, sandbox, user_data(target=16384, kernel_cmdline=True, install_auditd=True))
    grub = (root / "etc/default/grub").read_text()
    k, out = reboot(root, sandbox, GIB_64)
    assert not [c for c in fx.calls(root) if c.startswith(("update-grub", "grubby", "apt-get"))]
    assert (root / "etc/default/grub").read_text() == grub
    assert k["backlog_limit"] == 65536


# -- where there is no unit ----------------------------------------------------------------------------------


def test_sysv_amazon_linux_1_keeps_todays_behaviour_and_gets_no_unit(tmp_path, sandbox):
    root = tmp_path / "al1"
    fx.build(root, "al1")
    r = fx.run_user_data_ok(root, sandbox, user_data(target=8192, source="m5.large/8192MiB"))
    assert "unit: not installed (needs systemd, augenrules, a script file)" in said(r.stdout)
    assert said(r.stdout)[-1] == "backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)"
    assert (root / "etc/audit/audit.rules").read_text().splitlines()[0] == "-b 8192"
    for rel in (UNIT, SCRIPT, ENV, "etc/systemd"):
        assert not (root / rel).exists(), rel
    assert fakes.boot(root)["backlog_limit"] == 8192


def test_without_auditd_no_unit_is_installed(tmp_path, sandbox):
    root = tmp_path / "ubuntu"
    fx.build(root, "ubuntu2404-no-auditd")
    r = fx.run_user_data_ok(root, sandbox, user_data(target=8192))
    assert "unit: not installed (needs systemd, augenrules, a script file)" in said(r.stdout)
    assert not (root / UNIT).exists()


def test_boot_unit_off_installs_nothing_and_keeps_the_stdin_block(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    text = user_data(target=8192, boot_unit="off")
    assert "/bin/bash -s <<'CDK_AUDIT_BACKLOG' || true" in text and "CAB_UNIT" not in text
    r = fx.run_user_data_ok(root, sandbox, text)
    assert not [line for line in said(r.stdout) if line.startswith("unit:")]
    assert not (root / "etc/systemd").exists() and not (root / SCRIPT).exists()


def test_a_read_only_install_location_is_reported_and_the_limit_still_applied(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    (root / "usr/local").mkdir(parents=True)
    (root / "usr/local/sbin").write_text("not a directory\n")
    r = fx.run_user_data_ok(root, sandbox, user_data(target=8192, source="m5.large/8192MiB"))
    assert "unit: failed (boot target auto)" in said(r.stdout)
    assert said(r.stdout)[-1].startswith("backlog_limit 320 -> 8192 (")


# -- systemd's own check of the unit file --------------------------------------------------------------------

AUDIT_RULES_SERVICE = """[Unit]
Description=Load Audit Rules
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/augenrules --load
[Install]
WantedBy=auditd.service
"""


def _verify(units: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[f"./{n}" for n in names]],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def unit_dir(tmp_path, sandbox):
    """Our unit as the script writes it, beside Debian 12's real auditd.service and audit 4's
    audit-rules.service (as upstream ships them), their commands pointed at /bin/true."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    real = fx.BOOT_TOOLS / "lib/systemd/system/auditd.service"
    if not real.is_file():
        pytest.skip("make boot-tools has not unpacked Debian's auditd")
    root = tmp_path / "root"
    fx.build(root, "al2")
    fx.run_user_data_ok(root, sandbox, user_data(target=8192))
    d = tmp_path / "units"
    d.mkdir()
    shutil.copy(root / UNIT, d / "cdk-audit-backlog.service")
    auditd = real.read_text()
    assert "ExecStart=/sbin/auditd\n" in auditd and "ExecStartPost=-/sbin/augenrules --load\n" in auditd
    auditd = re.sub(r"(?m)^(ExecStart(Post)?=-?)/sbin/\S+.*$", r"\1/bin/true", auditd)
    (d / "auditd.service").write_text(auditd)
    (d / "audit-rules.service").write_text(
        AUDIT_RULES_SERVICE.replace("/sbin/augenrules --load", "/bin/true")
    )
    return d


def test_systemd_analyze_verify_accepts_the_unit_beside_both_audit_generations(unit_dir):
    r = _verify(unit_dir, "cdk-audit-backlog.service", "auditd.service", "audit-rules.service")
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_systemd_analyze_would_catch_an_ordering_cycle(unit_dir):
    """Without DefaultDependencies=no the unit is ordered after sysinit.target and before auditd.service,
    which is before sysinit.target: a cycle (this is why the unit has it)."""
    unit = unit_dir / "cdk-audit-backlog.service"
    unit.write_text(unit.read_text().replace("DefaultDependencies=no\n", ""))
    r = _verify(unit_dir, "cdk-audit-backlog.service", "auditd.service")
    assert r.returncode != 0 and "ordering cycle" in r.stdout + r.stderr


def test_our_own_command_line_value_and_the_unit_agree_on_later_boots(tmp_path, sandbox):
    """AL2023 (rules without -b) with kernel_cmdline=True: boot 1 writes -b 8192 and audit_backlog_limit=8192.
    From boot 2 on the command line already carries 8192, the limit the unit computes, so our file needs no
    -b line (emptied once, then left alone) and the machine stays at 8192; a resize up still raises it."""
    root = tmp_path / "al2023"
    fx.build(root, "al2023-fedora-file")
    fx.run_user_data_ok(root, sandbox, user_data(target=8192, source="m5.large/8192MiB", kernel_cmdline=True))
    assert our_b(root) == "-b 8192\n"
    assert "audit_backlog_limit=8192" in fakes.loader_cmdline(root).split()
    for _ in range(2):
        k, out = reboot(root, sandbox, GIB_8)
        assert k["backlog_limit"] == 8192
        assert said(out)[-1].startswith("backlog_limit 8192 -> 8192 (boot, MemTotal")
    assert "-b" not in our_b(root)
    k, _ = reboot(root, sandbox, GIB_64)
    assert k["backlog_limit"] == 65536 and our_b(root) == "-b 65536\n"
