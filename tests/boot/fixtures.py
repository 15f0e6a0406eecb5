"""Fixture roots: one per distribution layout, built from what each ships (read from the
distributions' packages and specs).

``build(root, name)`` lays out ``etc/audit``, the fake commands (``tests/boot/fakes.py``) where the
distribution has them, ``run/systemd/system`` on systemd distributions, the boot loader configuration,
``proc/meminfo``; then it "boots" the fixture (fresh kernel state, auditd's start loads the rules) so
the kernel's limit is what that distribution has when user data runs. The call log is then emptied.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from . import fakes

# What the distributions ship in /etc/audit/rules.d/audit.rules (or audit.rules), read from their packages.
DEBIAN_RULES = (
    "## First rule - delete all\n-D\n\n"
    "## Increase the buffers to survive stress events.\n## Make this bigger for busy systems\n-b 8192\n\n"
    "## This determine how long to wait in burst of events\n--backlog_wait_time 60000\n\n"
    "## Set failure mode to syslog\n-f 1\n\n"
)
RHEL8_RULES = DEBIAN_RULES  # RHEL 8/9 (audit 3.0.7): the same four lines
RHEL7_RULES = (
    "# This file contains the auditctl rules that are loaded\n"
    "# whenever the audit daemon is started via the initscripts.\n"
    "# The rules are simply the parameters that would be passed\n# to auditctl.\n\n"
    "# First rule - delete all\n-D\n\n# Increase the buffers to survive stress events.\n"
    "# Make this bigger for busy systems\n-b 8192\n\n"
    "# Feel free to add below this line. See auditctl man page\n"
    "-f 1\n"
)
AL2_SEED_RULES = (
    "# First rule - delete all\n-D\n\n# Increase the buffers to survive stress events.\n-b 320\n\n-f 1\n"
)
FEDORA_RULES = (
    "## First rule - delete all\n-D\n\n"
    "## This suppresses syscall auditing for all tasks started\n"
    "## with this rule in effect.  Remove it if you need syscall\n"
    "## auditing.\n-a task,never\n"
)
AL1_RULES = (
    "# First rule - delete all\n-D\n\n"
    "# Increase the buffers to survive stress events.\n-b 320\n\n-a never,task\n"
)
SUSE_RULES = "-D\n-a task,never\n"


@dataclass(frozen=True)
class Layout:
    """One distribution's audit and boot set-up."""

    rules: dict = field(default_factory=dict)  # path under etc/audit -> text
    auditd: bool = True
    systemd: bool = True
    refuse_manual_stop: bool = True
    loader: str = "augenrules"  # how auditd's start loads rules: augenrules --load | auditctl -R audit.rules
    # which unit runs the loader at boot: auditd.service's ExecStartPost (audit 2.x/3.x) or a unit of its
    # own, audit-rules.service, that auditd.service requires (audit 4.0)
    rules_service: str = "auditd"
    version: str = "3.0"
    bwt_supported: bool = True
    status_format: str = "lines"
    hz: int = 250
    boot: str = "grubby"  # grubby | grub (/etc/default/grub + update-grub) | grub2 (grub2-mkconfig only)
    package_manager: str = "dnf"
    package_name: str = "audit"
    start_on_install: bool = False
    sysconfig: Optional[str] = None  # /etc/sysconfig/auditd text (SysV)
    mem_kib: Optional[int] = 8006068  # MemTotal of an 8 GiB instance; None: no /proc/meminfo


# Debian 12 and Ubuntu 22.04/24.04 share Debian's packaging (Ubuntu's is inferred from it, not read).
_DEBIAN_FAMILY = Layout(
    rules={"rules.d/audit.rules": DEBIAN_RULES},
    refuse_manual_stop=False,
    boot="grub",
    package_manager="apt-get",
    package_name="auditd",
    start_on_install=True,
)

LAYOUTS: dict[str, Layout] = {
    "al2": Layout(rules={"rules.d/audit.rules": AL2_SEED_RULES}, version="2.8", package_manager="yum"),
    "al2-rhel7-file": Layout(
        rules={"rules.d/audit.rules": RHEL7_RULES}, version="2.8", package_manager="yum"
    ),
    "al2023-fedora-file": Layout(rules={"rules.d/audit.rules": FEDORA_RULES}),
    "al2023-rhel-file": Layout(rules={"rules.d/audit.rules": RHEL8_RULES}),
    "rhel9": Layout(rules={"rules.d/audit.rules": RHEL8_RULES}),
    "rhel7": Layout(rules={"rules.d/audit.rules": RHEL7_RULES}, version="2.8", package_manager="yum"),
    "fedora": Layout(rules={"rules.d/audit.rules": FEDORA_RULES}),
    "ubuntu2204": _DEBIAN_FAMILY,
    "ubuntu2404": _DEBIAN_FAMILY,
    "debian12": _DEBIAN_FAMILY,
    # Amazon Linux 1: SysV init, auditd loads /etc/audit/audit.rules itself (USE_AUGENRULES="no"), even
    # though the package also ships augenrules and a rules.d directory.
    "al1": Layout(
        rules={"audit.rules": AL1_RULES, "rules.d/audit.rules": AL1_RULES},
        systemd=False,
        loader="auditctl",
        version="2.6",
        sysconfig='EXTRAOPTIONS=""\nAUDITD_LANG="en_US"\nAUDITD_CLEAN_STOP="yes"\nUSE_AUGENRULES="no"\n',
        package_manager="yum",
    ),
    "sles15": Layout(rules={"rules.d/audit.rules": SUSE_RULES}, boot="grub2", package_manager="zypper"),
}
# Debian 13: the same packaging and four-line rules.d/audit.rules, on audit 4.0.2 (audit-rules.service).
LAYOUTS["debian13"] = replace(_DEBIAN_FAMILY, version="4.0", rules_service="audit-rules")
LAYOUTS["ubuntu2204-no-auditd"] = replace(LAYOUTS["ubuntu2204"], auditd=False)
LAYOUTS["ubuntu2404-no-auditd"] = replace(LAYOUTS["ubuntu2404"], auditd=False)

KERNEL = "vmlinuz-6.1.0-fixture"
BOOT_ARGS = fakes.BOOT_ARGS


def build(root: Path, name: str, **overrides) -> Layout:
    layout = replace(LAYOUTS[name], **overrides)
    root.mkdir(parents=True, exist_ok=True)
    fake = root / ".fake"
    fake.mkdir(exist_ok=True)
    etc_audit = root / "etc/audit"
    package_files = {f"etc/audit/{rel}": text for rel, text in layout.rules.items()}
    cfg = {
        "version": layout.version,
        "bwt_supported": layout.bwt_supported,
        "status_format": layout.status_format,
        "hz": layout.hz,
        "loader": layout.loader,
        "rules_service": layout.rules_service,
        "refuse_manual_stop": layout.refuse_manual_stop,
        "package_manager": layout.package_manager,
        "package_name": layout.package_name,
        "start_on_install": layout.start_on_install,
        "package_files": package_files,
    }
    (fake / "config.json").write_text(json.dumps(cfg, indent=1))
    if layout.auditd:
        for rel, text in package_files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            p.chmod(0o640)
        for cmd in ("auditctl", "augenrules"):
            fakes.write_wrapper(root / "sbin" / cmd, cmd)
    if layout.systemd:
        (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
        fakes.write_wrapper(root / "usr/bin/systemctl", "systemctl")
    fakes.write_wrapper(root / "usr/sbin/service", "service")
    if layout.sysconfig is not None:
        (root / "etc/sysconfig").mkdir(parents=True, exist_ok=True)
        (root / "etc/sysconfig/auditd").write_text(layout.sysconfig)
    fakes.write_wrapper(root / "usr/bin" / layout.package_manager, layout.package_manager)
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / KERNEL).write_text("")
    if layout.boot == "grubby":
        fakes.write_wrapper(root / "usr/sbin/grubby", "grubby")
        entries = root / "boot/loader/entries"
        entries.mkdir(parents=True, exist_ok=True)
        for ver in ("6.1.0-fixture", "6.1.0-fixture-old"):
            (entries / f"fixture-{ver}.conf").write_text(
                f"title Fixture ({ver})\nversion {ver}\nlinux /vmlinuz-{ver}\noptions {BOOT_ARGS}\n"
            )
    else:
        (root / "etc/default").mkdir(parents=True, exist_ok=True)
        (root / "etc/default/grub").write_text(
            'GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
        )
        if layout.boot == "grub":
            fakes.write_wrapper(root / "usr/sbin/update-grub", "update-grub")
        fakes.write_wrapper(root / "usr/sbin/grub2-mkconfig", "grub2-mkconfig")
        regenerate_grub(root)  # the image's generated grub.cfg, which the next boot reads
    (root / "proc").mkdir(exist_ok=True)
    if layout.mem_kib is not None:
        (root / "proc/meminfo").write_text(
            f"MemTotal:       {layout.mem_kib} kB\nMemFree:         7371520 kB\nMemAvailable:    7640000 kB\n"
        )
    (root / "var/lib").mkdir(parents=True, exist_ok=True)
    fakes.boot(root)
    if layout.auditd and layout.loader == "augenrules" and not (etc_audit / "audit.rules").exists():
        raise AssertionError("fixture boot did not generate audit.rules")
    calls = fake / "calls"
    if calls.exists():
        calls.unlink()
    return layout


def regenerate_grub(root: Path) -> None:
    """The fixture's own update-grub (Debian family), else grub2-mkconfig -o /boot/grub2/grub.cfg."""
    env = {"CAB_ROOT": str(root)}
    if (root / "usr/sbin/update-grub").exists():
        subprocess.run([str(root / "usr/sbin/update-grub")], env=env, check=True)
    else:
        subprocess.run(
            [str(root / "usr/sbin/grub2-mkconfig"), "-o", f"{root}/boot/grub2/grub.cfg"], env=env, check=True
        )


def add_loader_arg(root: Path, arg: str) -> None:
    """What a hardened image does before we run (e.g. the STIG's fix for audit_backlog_limit): ARG on every
    kernel's command line with the fixture's own boot tool (``grubby --update-kernel=ALL --args=ARG``, or
    GRUB_CMDLINE_LINUX in /etc/default/grub and a regenerated grub.cfg). The next ``fakes.boot`` boots with
    it. The call log is emptied."""
    if (root / "usr/sbin/grubby").exists():
        subprocess.run([str(root / "usr/sbin/grubby"), "--update-kernel=ALL", f"--args={arg}"],
                       env={"CAB_ROOT": str(root)}, check=True)  # fmt: skip
    else:
        grub = root / "etc/default/grub"
        text, n = re.subn(
            r'^GRUB_CMDLINE_LINUX="', f'GRUB_CMDLINE_LINUX="{arg} ', grub.read_text(), flags=re.M
        )
        assert n == 1, text
        grub.write_text(text)
        regenerate_grub(root)
    clear_calls(root)


def remove_rules_b(root: Path) -> None:
    """Rules files without their -b lines (AL2023's and Fedora's shipped rules have none)."""
    for f in (root / "etc/audit").rglob("*.rules"):
        f.write_text(
            "".join(line + "\n" for line in f.read_text().splitlines() if not line.strip().startswith("-b"))
        )


def set_kernel(root: Path, **values) -> None:
    """Change the fixture's running kernel state (e.g. enabled=2 for immutable)."""
    path = root / ".fake/kernel.json"
    k = json.loads(path.read_text())
    k.update(values)
    path.write_text(json.dumps(k, indent=1))


def kernel(root: Path) -> dict:
    return json.loads((root / ".fake/kernel.json").read_text())


def calls(root: Path) -> list[str]:
    p = root / ".fake/calls"
    return p.read_text().splitlines() if p.exists() else []


def clear_calls(root: Path) -> None:
    p = root / ".fake/calls"
    if p.exists():
        p.unlink()


# Real tools the script may use, and nothing else: a command missing here fails the test loudly.
SANDBOX_TOOLS = (
    "bash", "sh", "awk", "sed", "grep", "ls", "cat", "tr", "cp", "rm", "chmod", "mkdir", "timeout",
    "env", "sleep", "head", "mktemp", "cmp", "ln", "base64", "gzip",
)  # fmt: skip


def make_sandbox(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for tool in SANDBOX_TOOLS:
        real = shutil.which(tool, path="/usr/bin:/bin")
        if real is None:
            raise RuntimeError(f"{tool} not found on this machine")
        link = path / tool
        if not link.exists():
            os.symlink(real, link)
    return path


def tree_digest(root: Path) -> dict:
    """Every file under root except the fakes' own bookkeeping, with its content, mode and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(".fake") or p.is_dir():
            continue
        st = p.lstat()
        out[rel] = (p.read_bytes() if p.is_file() else b"", st.st_mode, st.st_mtime_ns)
    return out


REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "userdata" / "audit-backlog.sh"


def script_env(root: Path, sandbox: Path, **inputs) -> dict:
    """The environment the script gets on a fixture: the fixture's bin directories first (as on the
    instance), the sandbox of real tools last; inputs as CAB_* variables (None: unset)."""
    env = {
        "PATH": f"{root}/usr/sbin:{root}/usr/bin:{root}/sbin:{root}/bin:{sandbox}",
        "CAB_ROOT": str(root),
        "LANG": "C.UTF-8",
    }
    for key, value in inputs.items():
        if value is not None:
            env[f"CAB_{key.upper()}"] = str(value)
    return env


def run_script(root: Path, sandbox: Path, timeout: float = 60, args: tuple = (), **inputs):
    """Run the shipped script (all features) on the fixture, as `bash audit-backlog.sh [ARGS]`."""
    import subprocess

    return subprocess.run(
        [str(sandbox / "bash"), str(SCRIPT), *args],
        env=script_env(root, sandbox, **inputs),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_user_data(root: Path, sandbox: Path, text: str, timeout: float = 60):
    """Run a whole user data script (e.g. the rendered block plus user lines) the way cloud-init does:
    written to a file and executed through its shebang."""
    import subprocess

    path = root / ".fake" / "user-data"
    path.write_text(text)
    path.chmod(0o700)
    return subprocess.run(
        [str(path)],
        env=script_env(root, sandbox),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_user_data_ok(root: Path, sandbox: Path, text: str):
    """``run_user_data`` for a script whose last line is ``echo user-line``: it exited 0 and that line ran
    last (the block never stops the user's script)."""
    r = run_user_data(root, sandbox, text)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "user-line", r.stdout
    return r


def block_body(text: str) -> str:
    """The here-document a block in user data runs: what the script installs as itself."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("<<'CDK_AUDIT_BACKLOG' || true"))
    end = lines.index("CDK_AUDIT_BACKLOG")
    return "\n".join(lines[start + 1 : end]) + "\n"


def run_ssm_step(tmp_path: Path, lines: list[str], root: Path, sandbox: Path):
    """As the SSM agent runs a runShellScript step: the lines joined into a file, run with ``sh -c FILE``."""
    script = tmp_path / "_script.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o700)
    return subprocess.run(
        [str(sandbox / "sh"), "-c", str(script)],
        env=script_env(root, sandbox),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def console_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("cdk-audit-backlog: ")]


# ------------------------------------------------------------------------------------- real tools
# Unpacked by `make boot-tools` (tests/boot/fetch-tools.sh): Debian 12's auditd 3.0.9 package, gawk 5.2
# and busybox 1.35. Tests that need them skip when they are missing.
BOOT_TOOLS = REPO / ".cache" / "boot-tools" / "root"
REAL_AUGENRULES = BOOT_TOOLS / "sbin" / "augenrules"
GAWK = BOOT_TOOLS / "usr" / "bin" / "gawk"
BUSYBOX = BOOT_TOOLS / "bin" / "busybox"


REAL_AUDITCTL = BOOT_TOOLS / "sbin" / "auditctl"
REAL_LIBS = f"{BOOT_TOOLS}/lib/x86_64-linux-gnu:{BOOT_TOOLS}/usr/lib/x86_64-linux-gnu"

# The audit 4 generation, also from `make boot-tools`: Debian 13's auditd 4.0.2 package (merged /usr) and
# the libc it needs; its auditctl runs through that libc's own loader (Debian 12's glibc is too old).
AUDIT4_TOOLS = BOOT_TOOLS.parent / "audit4" / "root"
AUDIT4_VERSION_FILE = BOOT_TOOLS.parent / "audit4" / "auditd-version"
REAL_AUGENRULES_4 = AUDIT4_TOOLS / "usr" / "sbin" / "augenrules"
REAL_AUDITCTL_4 = AUDIT4_TOOLS / "usr" / "sbin" / "auditctl"
AUDIT4_LOADER = AUDIT4_TOOLS / "usr" / "lib64" / "ld-linux-x86-64.so.2"
AUDIT4_LIBS = f"{AUDIT4_TOOLS}/usr/lib/x86_64-linux-gnu"


def real_auditctl_command(generation: str = "3") -> list[str]:
    """The argv prefix that runs Debian's real auditctl of that generation ("3": 3.0.9, "4": 4.0.2)."""
    if generation == "4":
        return [str(AUDIT4_LOADER), "--library-path", AUDIT4_LIBS, str(REAL_AUDITCTL_4)]
    return ["env", f"LD_LIBRARY_PATH={REAL_LIBS}", str(REAL_AUDITCTL)]


def real_auditctl(*args: str, generation: str = "3") -> subprocess.CompletedProcess:
    """Debian's real auditctl with ARGS (the tests only ever pass -h or -s: usage text, read-only status)."""
    return subprocess.run(
        real_auditctl_command(generation) + list(args),
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
    )


def real_auditctl_help(generation: str = "3") -> subprocess.CompletedProcess:
    """Debian's real ``auditctl -h`` (usage text only: the tests never run it with anything else)."""
    return real_auditctl("-h", generation=generation)


def use_real_auditctl_help(root: Path, generation: str = "3") -> None:
    """The fixture's auditctl answers -h with Debian's real auditctl, everything else with the fake."""
    import shlex

    path = root / "sbin" / "auditctl"
    fake = path.read_text().splitlines()[1]
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -h ]; then exec {shlex.join(real_auditctl_command(generation))} -h; fi\n'
        f"{fake}\n"
    )


def real_tools_available() -> bool:
    return REAL_AUGENRULES.is_file() and GAWK.is_file() and BUSYBOX.is_file()


def audit4_tools_available() -> bool:
    return REAL_AUGENRULES_4.is_file() and REAL_AUDITCTL_4.is_file() and AUDIT4_LOADER.is_file()


def layout_generation(root: Path) -> str:
    """The audit generation a built fixture emulates: "4" for audit 4.x, else "3" (2.x and 3.x share the
    3.0.9 tools in these tests)."""
    version = json.loads((root / ".fake/config.json").read_text()).get("version", "3.0")
    return "4" if version.startswith("4") else "3"


# The path constants of each generation's augenrules (each must be found exactly once, or Debian's script
# changed and the fixture would silently run something else).
_AUGENRULES_PATHS = {
    "3": ("[ -x /sbin/restorecon ]",),
    "4": ("[ -x /usr/sbin/restorecon ]",),
}


def use_real_augenrules(root: Path, generation: str | None = None) -> None:
    """Make the fixture's augenrules Debian's real script, its fixed paths pointed into the fixture.

    ``generation``: "3" (Debian 12's 3.0.9) or "4" (Debian 13's 4.0.2); default: the fixture's layout's
    (``"3"`` for a root without a layout). Only the path constants are changed: the merge, the "No change"
    check, 4.0's immutable check (``auditctl -s`` from PATH: the fixture's) and the file handling are the
    real ones. ``--load`` runs the fixture's (fake) auditctl -R.
    """
    if generation is None:
        generation = layout_generation(root) if (root / ".fake/config.json").exists() else "3"
    source = REAL_AUGENRULES_4 if generation == "4" else REAL_AUGENRULES
    text = source.read_text()
    (restorecon,) = _AUGENRULES_PATHS[generation]
    for old, new in (
        ("DestinationFile=/etc/audit/audit.rules\n", f"DestinationFile={root}/etc/audit/audit.rules\n"),
        ("SourceRulesDir=/etc/audit/rules.d\n", f"SourceRulesDir={root}/etc/audit/rules.d\n"),
        ("\t\t/sbin/auditctl -R ", f"\t\t{root}/sbin/auditctl -R "),
        (restorecon, f"[ -x {root}/sbin/restorecon ]"),
    ):
        if text.count(old) != 1:
            raise AssertionError(f"Debian's augenrules {generation}.x changed: {old!r} not found once")
        text = text.replace(old, new)
    path = root / "sbin" / "augenrules"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def make_awk_sandbox(path: Path, awk: str) -> Path:
    """A sandbox whose `awk` is gawk or busybox awk (instead of this machine's mawk)."""
    make_sandbox(path)
    link = path / "awk"
    link.unlink()
    libs = BOOT_TOOLS / "usr" / "lib" / "x86_64-linux-gnu"
    if awk == "gawk":
        target = f'LD_LIBRARY_PATH="{libs}" exec "{GAWK}" "$@"'
    elif awk == "busybox":
        target = f'exec "{BUSYBOX}" awk "$@"'
    else:
        raise ValueError(awk)
    link.write_text(f"#!/bin/sh\n{target}\n")
    link.chmod(0o755)
    return path
