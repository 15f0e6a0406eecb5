"""Builds the Debian test images, one per suite (cached by a key of their inputs), and their variants.

Public API (stable; other scenarios build on it):

* ``SUITES``: the suites the harness builds, ``("bookworm", "trixie")``; ``DEFAULT_SUITE`` is bookworm.
  ``SUITE_NAMES[suite]`` says which Debian it is ("Debian 12", "Debian 13").
* ``build_image(variant=DEBIAN, suite=DEFAULT_SUITE) -> Image``: the variant's disk plus the suite's kernel
  (booted without an initramfs: see ``vm.ROOT_DEVICE``); ``Image.suite`` says which suite it is.
  ``VARIANTS`` maps names to the layouts.
* ``build_base(suite)``, ``base_build_seconds(suite)``: the bootstrapped tree, and how long it took.

Two cache levels under ``.cache/e2e/`` (``E2E_CACHE``; gitignored):

* ``base-<key>/``: the mmdebstrap tree of one suite plus the kernel taken out of its ``/boot``. The
  key covers the suite, the package list, mmdebstrap's version, the apt sources and the customize hook; the
  file ``suite`` inside names the suite, so a new key of one suite replaces only that suite's old tree.
* ``base-<key>/pristine.raw``: the tree as an ext4 file system (``mkfs.ext4 -d``), made once.
* ``base-<key>/img-<variant>-<key>.raw``: a sparse copy of ``pristine.raw`` with the guest reporter installed
  and a layout variant applied by ``debugfs -w``, every written file read back and compared. Its key adds the
  guest files and the variant's files (as written on that suite).

Boots never write to these: every boot gets its own qcow2 overlay (``vm.py``). Builds take a lock file
per suite (``lock-<suite>``): ``make test`` boots from two pytest-xdist workers at once, and two processes
must not build (or replace) the same tree or image side by side; a process that waited finds the other's
result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
GUEST = Path(__file__).resolve().parent / "guest"
CACHE = Path(os.environ.get("E2E_CACHE", REPO / ".cache" / "e2e"))

SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = "bookworm"
SUITE_NAMES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
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
# dpkg without an fsync per file (the tree is thrown away if the build fails; it is built once per key), and
# without the documentation, manual pages and translations nothing in the guest reads: the build and the
# ext4 image are smaller and faster (mmdebstrap is the longest step of `make test`'s set-up).
MMDEBSTRAP_OPTIONS = (
    "--dpkgopt=force-unsafe-io",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
IMAGE_SIZE = "2G"


@dataclass(frozen=True)
class Variant:
    """A layout change on top of the Debian image: files to write (path -> (mode, content)), files to
    remove."""

    name: str
    files: Tuple[Tuple[str, int, str], ...] = ()
    remove: Tuple[str, ...] = ()
    description: str = ""

    def key_material(self) -> str:
        return json.dumps([self.name, list(self.files), list(self.remove)])


DEBIAN = Variant("debian", description="Debian 12 as shipped (rules.d/audit.rules: -b 8192, wait 60000)")

# Amazon Linux 2 as in the seed article: rules.d/audit.rules with -b 320 (no wait-time line), and the
# upstream unit's RefuseManualStop=yes (a drop-in, so Debian's ExecStartPost augenrules --load stays).
_AL2_RULES = (
    "## First rule - delete all\n-D\n\n## Increase the buffers to survive stress events.\n-b 320\n\n-f 1\n"
)
AL2 = Variant(
    "al2",
    files=(
        ("etc/audit/rules.d/audit.rules", 0o600, _AL2_RULES),
        (
            "etc/systemd/system/auditd.service.d/refuse-manual-stop.conf",
            0o644,
            "[Unit]\nRefuseManualStop=yes\n",
        ),
    ),
    description="AL2-like: rules.d/audit.rules -b 320, auditd unit RefuseManualStop=yes",
)
IMMUTABLE = Variant(
    "immutable",
    files=AL2.files + (("etc/audit/rules.d/99-finalize.rules", 0o600, "-e 2\n"),),
    description="AL2-like plus rules.d/99-finalize.rules with -e 2 (immutable until reboot)",
)
# Rules with no -b at all (Fedora's rules.d/audit.rules; Amazon Linux 2023 may ship the same): the limit the
# machine runs with is the kernel command line's audit_backlog_limit= where the image sets one (hardened
# images do), else the kernel's 64.
_NO_B_RULES = "## Delete all rules\n-D\n\n## No auditing of tasks unless rules say so\n-a task,never\n"
NO_B = Variant(
    "nob",
    files=(
        ("etc/audit/rules.d/audit.rules", 0o600, _NO_B_RULES),
        AL2.files[1],
    ),
    description="rules.d/audit.rules with no -b (Fedora's), auditd unit RefuseManualStop=yes",
)
VARIANTS: Dict[str, Variant] = {v.name: v for v in (DEBIAN, AL2, IMMUTABLE, NO_B)}


@dataclass
class Image:
    kernel: Path
    disk: Path
    variant: Variant
    suite: str = DEFAULT_SUITE
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


def _check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    return suite


def apt_sources(suite: str) -> Optional[bytes]:
    """The host's deb822 sources with its bookworm suites renamed to ``suite`` (None: mmdebstrap's default
    mirror). Both suites live in the same archive and are signed by keys in debian-archive-keyring."""
    if not APT_SOURCES.exists():
        return None
    text = APT_SOURCES.read_bytes()
    return text if suite == "bookworm" else text.replace(b"bookworm", suite.encode())


def base_key(suite: str = DEFAULT_SUITE) -> str:
    return _sha(
        _check_suite(suite).encode(),
        ",".join(PACKAGES).encode(),
        " ".join(MMDEBSTRAP_OPTIONS).encode(),
        _tool_version(["mmdebstrap", "--version"]),
        apt_sources(suite) or b"default-mirror",
        (GUEST / "customize.sh").read_bytes(),
    )


def _base_suite(base: Path) -> str:
    """The suite of a cached base tree (trees from before the suite file were bookworm)."""
    f = base / "suite"
    return f.read_text().strip() if f.exists() else "bookworm"


def _run(cmd: list, log: Path, timeout: float) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed with exit {proc.returncode}; last output:\n{tail}")


def drop_old_bases(suite: str, keep: Path) -> None:
    """Removes the suite's finished trees (and their images) other than ``keep``: dead weight once the key
    moved on. The other suite's trees stay."""
    for old in CACHE.glob("base-*"):
        if old != keep and (old / "done").exists() and _base_suite(old) == suite:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _cache_lock(suite: str) -> Iterator[None]:
    """One builder of the suite's tree and images at a time across processes (pytest-xdist workers, a
    ``make storm`` beside ``make test``); the other suite builds meanwhile."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"lock-{suite}", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_base(suite: str = DEFAULT_SUITE, timings: Optional[Dict[str, float]] = None) -> Path:
    """The suite's bootstrapped tree with its kernel beside it; built once per key."""
    key = base_key(suite)
    if (CACHE / f"base-{key}" / "done").exists():
        return CACHE / f"base-{key}"
    with _cache_lock(suite):
        return _build_base(suite, key, timings)


def _build_base(suite: str, key: str, timings: Optional[Dict[str, float]]) -> Path:
    base = CACHE / f"base-{key}"
    if (base / "done").exists():  # another process built it while this one waited for the lock
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
        *MMDEBSTRAP_OPTIONS,
        "--include=" + ",".join(PACKAGES),
        "--customize-hook=" + f"sh {GUEST / 'customize.sh'} \"$1\"",
        suite,
        str(tmp / "tree"),
    ]
    sources = apt_sources(suite)
    if sources is not None:
        (tmp / "debian.sources").write_bytes(sources)
        cmd.append(str(tmp / "debian.sources"))
    _run(cmd, log, timeout=1800)
    boot = tmp / "tree" / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the tree, got {kernels}")
    shutil.copy2(kernels[0], tmp / "vmlinuz")
    (tmp / "kernel-version").write_text(kernels[0].name[len("vmlinuz-"):] + "\n")
    (tmp / "suite").write_text(suite + "\n")
    (tmp / "done").write_text(f"{time.monotonic() - started:.1f}\n")
    if base.exists():
        shutil.rmtree(base)
    tmp.rename(base)
    drop_old_bases(suite, keep=base)
    if timings is not None:
        timings["base_build_s"] = time.monotonic() - started
    return base


def base_build_seconds(suite: str = DEFAULT_SUITE) -> str:
    """How long the suite's current base tree took to build, for reports ("not built" if it is not there)."""
    done = CACHE / f"base-{base_key(suite)}" / "done"
    return f"built in {float(done.read_text()):.0f}s (cached by key)" if done.exists() else "not built"


def _guest_files() -> Tuple[Tuple[str, int, bytes], ...]:
    return (
        ("usr/local/sbin/e2e-guest", 0o755, (GUEST / "e2e-guest.sh").read_bytes()),
        ("usr/local/sbin/e2e-storm", 0o755, (GUEST / "e2e-storm.sh").read_bytes()),
        ("etc/systemd/system/e2e-guest.service", 0o644, (GUEST / "e2e-guest.service").read_bytes()),
        ("etc/systemd/system/e2e-early.service", 0o644, (GUEST / "e2e-early.service").read_bytes()),
        ("etc/cloud/cloud.cfg.d/91-e2e-modules.cfg", 0o644, (GUEST / "91-e2e-modules.cfg").read_bytes()),
    )


def build_image(variant: Variant = DEBIAN, suite: str = DEFAULT_SUITE) -> Image:
    """The variant's ext4 image on ``suite`` (one of ``SUITES``; cached), with the suite's kernel."""
    timings: Dict[str, float] = {}
    base = build_base(suite, timings)
    guest = _guest_files()
    key = _sha(base.name.encode(), variant.key_material().encode(), *[p.encode() + c for p, _, c in guest])
    disk = base / f"img-{variant.name}-{key}.raw"
    if not disk.exists():
        with _cache_lock(suite):
            _build_disk(base, variant, guest, disk, timings)
    return Image(kernel=base / "vmlinuz", disk=disk, variant=variant, suite=suite,
                 timings=timings)


#: The units the image enables for the reporter (wants directory -> unit): cloud-init.target for a boot with
#: cloud-init, multi-user.target for one with cloud-init disabled, sysinit.target for the early audit status.
_WANTS = (
    ("cloud-init.target", "e2e-guest.service"),
    ("multi-user.target", "e2e-guest.service"),
    ("sysinit.target", "e2e-early.service"),
)


def _pristine_disk(base: Path) -> Path:
    """The base tree as an ext4 image (``mkfs.ext4 -d``), made once per base tree: every variant starts as a
    sparse copy of it (caller holds the suite's lock)."""
    raw = base / "pristine.raw"
    if not raw.exists():
        tmp = base / "pristine.raw.tmp"
        _run(["mkfs.ext4", "-q", "-F", "-L", "e2e-root", "-d", str(base / "tree"), str(tmp), IMAGE_SIZE],
             base / "mkfs.log", timeout=600)
        tmp.rename(raw)
    return raw


def _build_disk(base: Path, variant: Variant, guest: Tuple[Tuple[str, int, bytes], ...], disk: Path,
                timings: Dict[str, float]) -> None:
    """The variant's disk: a sparse copy of the pristine image with the guest files, the reporter's unit links
    and the variant's files written into it, and the variant's removals made, by ``debugfs -w`` (no copy of
    the tree, no second mkfs: about a fifth of the time per variant). Each written file is read back and
    compared (content, mode, owner), since debugfs reports a failed command only in its output."""
    if disk.exists():  # another process may have built it while this one waited for the lock
        return
    started = time.monotonic()
    pristine = _pristine_disk(base)
    work = Path(tempfile.mkdtemp(prefix=f"img-{variant.name}.", dir=base))
    try:
        raw = work / "disk.raw"
        subprocess.run(["cp", "--sparse=always", str(pristine), str(raw)], check=True)
        tree = base / "tree"  # what the pristine image holds
        made: set = set()
        cmds = []

        def parents(rel: str) -> None:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made and not (tree / d).is_dir():
                    cmds.append(f"mkdir /{d}")
                    made.add(d)

        files = [(rel, mode, content) for rel, mode, content in guest]
        files += [(rel, mode, text.encode()) for rel, mode, text in variant.files]
        written = {}
        for i, (rel, mode, content) in enumerate(files):
            src = work / f"file-{i}"
            src.write_bytes(content)
            parents(rel)
            if rel in written or (tree / rel).is_symlink() or (tree / rel).exists():
                cmds.append(f"rm /{rel}")
            cmds += [f"write {src} /{rel}", f"sif /{rel} mode 0{0o100000 | mode:o}",
                     f"sif /{rel} uid 0", f"sif /{rel} gid 0"]
            written[rel] = (mode, content)
        links = {}
        for wants, unit in _WANTS:
            rel = f"etc/systemd/system/{wants}.wants/{unit}"
            if not (tree / rel).is_symlink():
                parents(rel)
                cmds.append(f"symlink /{rel} /etc/systemd/system/{unit}")
                links[rel] = f"/etc/systemd/system/{unit}"
        for rel in variant.remove:
            if (tree / rel).exists() or rel in written:
                cmds.append(f"rm /{rel}")
                written.pop(rel, None)
        script = work / "debugfs.cmds"
        script.write_text("\n".join(cmds) + "\n")
        _run(["debugfs", "-w", "-f", str(script), str(raw)], work / "debugfs.log", timeout=300)
        _check_written(raw, written, links, work)
        raw.rename(disk)
        for old in base.glob(f"img-{variant.name}-*.raw"):  # superseded guest files or variant edits
            if old != disk:
                old.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["image_build_s"] = time.monotonic() - started


def _check_written(raw: Path, written: Dict[str, Tuple[int, bytes]], links: Dict[str, str],
                   work: Path) -> None:
    """Reads every written file back out of the image (``debugfs dump -p`` keeps mode and owner) and each
    symbolic link's target, and raises unless they are what was asked."""
    out = work / "check"
    out.mkdir()
    names = {rel: out / f"f{i}" for i, rel in enumerate(written)}
    script = work / "check.cmds"
    script.write_text("".join(f"dump -p /{rel} {names[rel]}\n" for rel in written)
                      + "".join(f"stat /{rel}\n" for rel in links))
    log = work / "check.log"
    _run(["debugfs", "-f", str(script), str(raw)], log, timeout=300)
    said = log.read_text(errors="replace")
    for rel, target in links.items():
        if f'Fast link dest: "{target}"' not in said:
            raise RuntimeError(f"e2e image: the link /{rel} -> {target} was not made (see {log})")
    for rel, (mode, content) in written.items():
        got = names[rel]
        if not got.exists():
            raise RuntimeError(f"e2e image: /{rel} was not written (see {work / 'debugfs.log'})")
        st = got.stat()
        if got.read_bytes() != content or (st.st_mode & 0o7777) != mode or (st.st_uid, st.st_gid) != (0, 0):
            raise RuntimeError(f"e2e image: /{rel} reads back as mode {st.st_mode & 0o7777:o} "
                               f"owner {st.st_uid}:{st.st_gid}, {got.stat().st_size} bytes; asked for "
                               f"mode {mode:o}, root, {len(content)} bytes")


def build_all(suite: str) -> Dict[str, Image]:
    """Every variant's image on ``suite`` (``make test`` builds them for both suites, one process per suite,
    while it installs the Python packages: the boots then start at once)."""
    return {name: build_image(variant, suite) for name, variant in VARIANTS.items()}


def _main(argv: list) -> None:
    """``python -m e2e.image [variant [suite]]``: build one image and print what was built;
    ``python -m e2e.image --all [SUITE ...]``: every variant of each suite (default: all of ``SUITES``), the
    suites side by side (mmdebstrap waits on the mirror and dpkg as much as on the CPU). Standard library
    only, so it runs before the venv exists."""
    if argv[:1] == ["--all"]:
        from concurrent.futures import ThreadPoolExecutor

        def one(suite: str) -> None:
            started = time.monotonic()
            images = build_all(suite)
            print(f"e2e images {suite}: {', '.join(images)} ready in {time.monotonic() - started:.0f}s "
                  f"(base tree {base_build_seconds(suite)})", flush=True)

        suites = argv[1:] or list(SUITES)
        with ThreadPoolExecutor(max_workers=len(suites)) as pool:
            for done in [pool.submit(one, _check_suite(s)) for s in suites]:
                done.result()
        return
    img = build_image(VARIANTS[argv[0] if argv else "debian"], argv[1] if len(argv) > 1 else DEFAULT_SUITE)
    print(json.dumps({"suite": img.suite, "kernel": str(img.kernel),
                      "disk": str(img.disk), **img.timings}, indent=1))


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
