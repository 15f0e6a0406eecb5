"""Builds the Debian 12 test image (cached by a key of its inputs) and its variants.

Two cache levels under ``.cache/e2e/`` (gitignored):

* ``base-<key>/``: the mmdebstrap tree plus the kernel and initrd taken out of its ``/boot``. The key covers
  the suite, the package list, mmdebstrap's version, the apt sources and the customize hook.
* ``base-<key>/img-<variant>-<key>.raw``: an ext4 file system made with ``mkfs.ext4 -d`` from a copy of the tree with the guest
  reporter installed and a layout variant applied. Its key adds the guest files and the variant's files.

Boots never write to these: every boot gets its own qcow2 overlay (``vm.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
GUEST = Path(__file__).resolve().parent / "guest"
CACHE = Path(os.environ.get("E2E_CACHE", REPO / ".cache" / "e2e"))

SUITE = "bookworm"
PACKAGES = (
    "linux-image-cloud-amd64",
    "auditd",
    "cloud-init",
    "systemd-sysv",
    "udev",
    "kmod",
    "ifupdown",
    "procps",
    "grub-common",
    "grub2-common",
)
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
IMAGE_SIZE = "2G"


@dataclass(frozen=True)
class Variant:
    """A layout change on top of the Debian image: files to write (path -> (mode, content)), files to remove."""

    name: str
    files: Tuple[Tuple[str, int, str], ...] = ()
    remove: Tuple[str, ...] = ()
    description: str = ""

    def key_material(self) -> str:
        return json.dumps([self.name, list(self.files), list(self.remove)])


DEBIAN = Variant("debian", description="Debian 12 as shipped (rules.d/audit.rules: -b 8192, wait 60000)")

# Amazon Linux 2 as in the seed article: rules.d/audit.rules with -b 320 (no wait-time line), and the
# upstream unit's RefuseManualStop=yes (a drop-in, so Debian's ExecStartPost augenrules --load stays).
_AL2_RULES = "## First rule - delete all\n-D\n\n## Increase the buffers to survive stress events.\n-b 320\n\n-f 1\n"
AL2 = Variant(
    "al2",
    files=(
        ("etc/audit/rules.d/audit.rules", 0o600, _AL2_RULES),
        ("etc/systemd/system/auditd.service.d/refuse-manual-stop.conf", 0o644, "[Unit]\nRefuseManualStop=yes\n"),
    ),
    description="AL2-like: rules.d/audit.rules -b 320, auditd unit RefuseManualStop=yes",
)
IMMUTABLE = Variant(
    "immutable",
    files=AL2.files + (("etc/audit/rules.d/99-finalize.rules", 0o600, "-e 2\n"),),
    description="AL2-like plus rules.d/99-finalize.rules with -e 2 (immutable until reboot)",
)
VARIANTS: Dict[str, Variant] = {v.name: v for v in (DEBIAN, AL2, IMMUTABLE)}


@dataclass
class Image:
    kernel: Path
    initrd: Path
    disk: Path
    variant: Variant
    timings: Dict[str, float] = field(default_factory=dict)


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _tool_version(cmd: list) -> bytes:
    try:
        return subprocess.run(cmd, capture_output=True, check=False).stdout
    except FileNotFoundError:
        return b"missing"


def base_key() -> str:
    return _sha(
        SUITE.encode(),
        ",".join(PACKAGES).encode(),
        _tool_version(["mmdebstrap", "--version"]),
        APT_SOURCES.read_bytes() if APT_SOURCES.exists() else b"default-mirror",
        (GUEST / "customize.sh").read_bytes(),
    )


def _run(cmd: list, log: Path, timeout: float) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed with exit {proc.returncode}; last output:\n{tail}")


def build_base(timings: Optional[Dict[str, float]] = None) -> Path:
    """The bootstrapped tree with kernel and initrd beside it; built once per key."""
    key = base_key()
    base = CACHE / f"base-{key}"
    if (base / "done").exists():
        return base
    if os.geteuid() != 0:
        raise RuntimeError("building the e2e image needs root (mmdebstrap writes a root-owned tree)")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"base-{key}.", dir=CACHE))
    log = tmp / "build.log"
    started = time.monotonic()
    cmd = [
        "mmdebstrap",
        "--variant=apt",
        "--include=" + ",".join(PACKAGES),
        "--customize-hook=" + f"sh {GUEST / 'customize.sh'} \"$1\"",
        SUITE,
        str(tmp / "tree"),
    ]
    if APT_SOURCES.exists():
        cmd.append(str(APT_SOURCES))
    _run(cmd, log, timeout=1200)
    boot = tmp / "tree" / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd in the tree, got {kernels} {initrds}")
    shutil.copy2(kernels[0], tmp / "vmlinuz")
    shutil.copy2(initrds[0], tmp / "initrd.img")
    (tmp / "kernel-version").write_text(kernels[0].name[len("vmlinuz-"):] + "\n")
    (tmp / "done").write_text(f"{time.monotonic() - started:.1f}\n")
    if base.exists():
        shutil.rmtree(base)
    tmp.rename(base)
    for old in CACHE.glob("base-*"):  # earlier keys (and their images) are dead weight
        if old != base and (old / "done").exists():
            shutil.rmtree(old, ignore_errors=True)
    if timings is not None:
        timings["base_build_s"] = time.monotonic() - started
    return base


def base_build_seconds() -> str:
    """How long the current base tree took to build, for reports ("not built" if it is not there)."""
    done = CACHE / f"base-{base_key()}" / "done"
    return f"built in {float(done.read_text()):.0f}s (cached by key)" if done.exists() else "not built"


def _guest_files() -> Tuple[Tuple[str, int, bytes], ...]:
    return (
        ("usr/local/sbin/e2e-guest", 0o755, (GUEST / "e2e-guest.sh").read_bytes()),
        ("usr/local/sbin/e2e-storm", 0o755, (GUEST / "e2e-storm.sh").read_bytes()),
        ("etc/systemd/system/e2e-guest.service", 0o644, (GUEST / "e2e-guest.service").read_bytes()),
    )


def build_image(variant: Variant = DEBIAN) -> Image:
    """The variant's ext4 image (cached), with the base's kernel and initrd."""
    timings: Dict[str, float] = {}
    base = build_base(timings)
    guest = _guest_files()
    key = _sha(base.name.encode(), variant.key_material().encode(), *[p.encode() + c for p, _, c in guest])
    disk = base / f"img-{variant.name}-{key}.raw"
    if not disk.exists():
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"img-{variant.name}.", dir=base))
        try:
            tree = work / "tree"
            subprocess.run(["cp", "-a", "--reflink=auto", str(base / "tree"), str(tree)], check=True)
            for rel, mode, content in guest:
                _write(tree / rel, mode, content)
            link = tree / "etc/systemd/system/cloud-init.target.wants/e2e-guest.service"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to("/etc/systemd/system/e2e-guest.service")
            for rel, mode, text in variant.files:
                _write(tree / rel, mode, text.encode())
            for rel in variant.remove:
                (tree / rel).unlink(missing_ok=True)
            raw = work / "disk.raw"
            _run(["mkfs.ext4", "-q", "-F", "-L", "e2e-root", "-d", str(tree), str(raw), IMAGE_SIZE],
                 work / "mkfs.log", timeout=600)
            raw.rename(disk)
            for old in base.glob(f"img-{variant.name}-*.raw"):  # superseded guest files or variant edits
                if old != disk:
                    old.unlink()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        timings["image_build_s"] = time.monotonic() - started
    return Image(kernel=base / "vmlinuz", initrd=base / "initrd.img", disk=disk, variant=variant, timings=timings)


def _write(path: Path, mode: int, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(content)
    os.chown(path, 0, 0)
    os.chmod(path, mode)


if __name__ == "__main__":  # python -m e2e.image [variant]: build and print what was built
    import sys

    img = build_image(VARIANTS[sys.argv[1] if len(sys.argv) > 1 else "debian"])
    print(json.dumps({"kernel": str(img.kernel), "initrd": str(img.initrd), "disk": str(img.disk),
                      **img.timings}, indent=1))
