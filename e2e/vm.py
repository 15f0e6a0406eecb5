"""Boots an image under qemu with a NoCloud seed and returns what the guest reported on its serial console.

Every run: a qcow2 overlay over the cached raw image (the base stays clean; pass the same overlay again to
boot the same disk), a seed made by ``cloud-localds``, ``-nic none``, ``timeout`` around qemu, and the
serial console read line by line with a host timestamp into a log file. Results are parsed from lines the
guest reporter prints (``E2E-RESULT boot=N key=value``, ``E2E-STORM ...``, ``E2E-MEM ...``).

``E2E_TIMEOUT_FACTOR`` (default 1) multiplies every run's time-out, for a machine shared with other work.

Acceleration is TCG (``-accel tcg,thread=multi``): on these machines ``/dev/kvm`` is a software
virtualization driver that cannot run nested guests (seen on our CI machines). ``E2E_ACCEL=kvm`` overrides.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .image import Image

#: The root disk is the one namespace of an NVMe controller (as on EC2's Nitro types): the cloud kernels build
#: NVMe and ext4 in, so the harness boots without an initramfs (measured: 3-5 s less per boot under TCG). It
#: must be the only NVMe namespace: kernel 6.12 scans namespaces in parallel, and a second one (the seed,
#: tried first) took the name nvme0n1 in some boots. The NoCloud seed is the one virtio disk, /dev/vda (udev
#: loads virtio_blk), which cloud-init's network stage waits for (``guest/customize.sh``).
ROOT_DEVICE = "/dev/nvme0n1"
BASE_APPEND = f"root={ROOT_DEVICE} rw console=ttyS0 quiet"
#: For a boot in which nothing of ours runs through cloud-init (the same instance started again: a resize, the
#: bootloader's new arguments, an image launched with no user data): cloud-init's generator leaves all of its
#: stages out. On EC2 they would run and find nothing new for the instance (the block runs once per
#: instance); under TCG they cost 30-50 s of Python start-up per boot. Every unit the tests order against
#: (the boot unit, the rules load, the reporter) still runs. A run of several boots sets the same in the
#: guest for its later boots (the reporter writes /etc/cloud/cloud-init.disabled before it reboots).
NO_CLOUD_INIT = "cloud-init=disabled"
#: vCPUs per guest. The limit follows memory only, so one vCPU changes no result and costs about 10 % less
#: host CPU per boot than two under TCG (measured: 76 s vs 85 s of CPU for the same boot); the storm boots
#: keep two, so auditd drains on another CPU while the storm runs, as on the instance types they stand for.
DEFAULT_SMP = 1
_RESULT = re.compile(r"E2E-RESULT boot=(\d+) ([^=\s]+)=(.*?)\r?$")
_KV = re.compile(r"(\w+)=(\S+)")


_PANIC = "Kernel panic - not syncing"
# The kernel's last line before it resets the machine (a reboot; with -no-reboot qemu then exits).
_REBOOTING = "reboot: Restarting system"
# A line printed by a process of the guest (journal and console style "name[pid]: ..."); the kernel's own
# lines (an Oops, the panic) are not of that form.
_PROCESS_LINE = re.compile(r"\S+\[\d+\]: ")


def crashed_before_init(lines: List[str]) -> bool:
    """True when the kernel panicked before any process of the guest printed a line (no disk writes yet)."""
    for text in lines:
        if _PANIC in text:
            return True
        if _PROCESS_LINE.search(text):
            return False
    return False


class EarlyKernelCrash(RuntimeError):
    def __init__(self, message: str, log: Path, overlay: Path) -> None:
        super().__init__(message)
        self.log, self.overlay = log, overlay


class QemuError(RuntimeError):
    pass


class KernelPanic(QemuError):
    """The guest's kernel panicked after init had started (so the disk may have changed)."""


@dataclass
class Run:
    """One run: one or more boots of the same disk, one qemu process per boot, one serial log."""

    name: str
    log: Path
    elapsed_s: float
    accel: str
    append: str
    lines: List[Tuple[float, str]]
    boots: Dict[int, Dict[str, str]] = field(default_factory=dict)
    boot_host_s: Dict[int, float] = field(default_factory=dict)  # host time of each boot's "phase=start"
    storm: List[Dict[str, str]] = field(default_factory=list)
    mem: List[Dict[str, str]] = field(default_factory=list)
    storm_begin: Dict[str, str] = field(default_factory=dict)
    storm_errors: List[str] = field(default_factory=list)
    storm_kernel: List[str] = field(default_factory=list)
    # The sampler around the storm (guest/e2e-storm.sh): each sample run by hand, its timer, its CPU.
    samples: List["Sample"] = field(default_factory=list)
    sampler: Dict[str, str] = field(default_factory=dict)
    sample_cpu: Dict[str, str] = field(default_factory=dict)

    def boot(self, n: int = 1) -> Dict[str, str]:
        if n not in self.boots:
            raise AssertionError(
                f"{self.name}: boot {n} reported nothing; serial log {self.log}\n{self.tail()}"
            )
        return self.boots[n]

    def last(self) -> Dict[str, str]:
        """The last boot's report (a run on a disk that booted before counts on from there)."""
        if not self.boots:
            return self.boot(1)
        return self.boots[max(self.boots)]

    def tail(self, n: int = 40) -> str:
        return "\n".join(f"[{t:8.3f}] {s}" for t, s in self.lines[-n:])

    def grep(self, pattern: str) -> List[str]:
        rx = re.compile(pattern)
        return [s for _, s in self.lines if rx.search(s)]


def _which(cmd: str) -> str:
    path = shutil.which(cmd)
    if not path:
        raise QemuError(f"{cmd} is not installed: run scripts/setup-debian.sh (make test does)")
    return path


def make_seed(workdir: Path, user_data: bytes, instance_id: str) -> Path:
    ud, md, seed = workdir / "user-data", workdir / "meta-data", workdir / f"seed-{instance_id}.img"
    ud.write_bytes(user_data)
    md.write_text(f"instance-id: {instance_id}\nlocal-hostname: e2e\n")
    subprocess.run([_which("cloud-localds"), str(seed), str(ud), str(md)], check=True, capture_output=True)
    return seed


def make_overlay(image: Image, path: Path) -> Path:
    subprocess.run(
        [_which("qemu-img"), "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(path)],
        check=True, capture_output=True,
    )
    return path


def boot(
    image: Image,
    *,
    name: str,
    workdir: Path,
    user_data: bytes,
    instance_id: str,
    overlay: Optional[Path] = None,
    memory_mib: int = 1024,
    smp: int = DEFAULT_SMP,
    append: str = BASE_APPEND,
    extra_append: str = "",
    timeout_s: int = 600,
) -> Run:
    """Boot (and boot again, on the same disk, while the guest reboots) until the guest powers off; raise
    if it does not.

    A kernel panic ends the run at once instead of at the timeout. A panic before any process of the guest
    printed a line (the kernel itself, before init: nothing on the disk changed) is retried once with the
    same disk and seed: under TCG, kernel 6.12 has crashed that early (an int3 Oops in sched_clock_cpu while
    code was being patched) in about one boot of twenty. A later panic in a run that made its own disk
    (``overlay`` None; e.g. the reboot of a two-boot run) reruns the whole run once on a fresh disk; in a run
    on an earlier run's disk it fails, as does a second panic.
    """
    timeout_s = int(timeout_s * float(os.environ.get("E2E_TIMEOUT_FACTOR", "1")))
    try:
        run = _boot_once(image, name=name, workdir=workdir, user_data=user_data, instance_id=instance_id,
                         overlay=overlay, memory_mib=memory_mib, smp=smp, append=append,
                         extra_append=extra_append, timeout_s=timeout_s)
    except EarlyKernelCrash as crash:
        print(f"e2e: {name}: {crash}; booting once more", flush=True)
        os.replace(crash.log, crash.log.with_suffix(".crashed.log"))
        run = _boot_once(image, name=name, workdir=workdir, user_data=user_data, instance_id=instance_id,
                         overlay=crash.overlay, memory_mib=memory_mib, smp=smp, append=append,
                         extra_append=extra_append, timeout_s=timeout_s, retry=False)
    except KernelPanic as panic:
        if overlay is not None:
            raise  # the disk came from an earlier run and may have changed: a retry would not start the same
        # The run made its own disk: a whole new run on a fresh overlay starts exactly as this one did (a
        # later boot of a multi-boot run, e.g. the reboot of the immutable scenario, hit the same TCG panic).
        first_line = str(panic).splitlines()[0]
        print(f"e2e: {name}: {first_line}; the whole run once more on a fresh disk", flush=True)
        log = workdir / f"{name}.serial.log"
        if log.exists():
            os.replace(log, log.with_suffix(".crashed.log"))
        (workdir / f"{name}.qcow2").unlink(missing_ok=True)
        run = _boot_once(image, name=name, workdir=workdir, user_data=user_data, instance_id=instance_id,
                         overlay=None, memory_mib=memory_mib, smp=smp, append=append,
                         extra_append=extra_append, timeout_s=timeout_s, retry=False)
    _log_run(run, image)
    return run


def _log_run(run: Run, image: Image) -> None:
    """One JSON line per qemu run to ``$E2E_BOOT_LOG`` when set (tests/conftest.py counts the boots of a
    ``make test`` with it)."""
    path = os.environ.get("E2E_BOOT_LOG")
    if not path:
        return
    import json

    line = {"run": run.name, "suite": image.suite, "variant": image.variant.name, "boots": len(run.boots),
            "seconds": round(run.elapsed_s, 1), "pid": os.getpid()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _boot_once(
    image: Image,
    *,
    name: str,
    workdir: Path,
    user_data: bytes,
    instance_id: str,
    overlay: Optional[Path],
    memory_mib: int,
    smp: int,
    append: str,
    extra_append: str,
    timeout_s: int,
    retry: bool = True,
) -> Run:
    qemu = _which("qemu-system-x86_64")
    _which("timeout")
    workdir.mkdir(parents=True, exist_ok=True)
    if overlay is None:
        overlay = make_overlay(image, workdir / f"{name}.qcow2")
    seed_dir = Path(tempfile.mkdtemp(prefix="seed-", dir=workdir))
    seed = make_seed(seed_dir, user_data, instance_id)
    accel = os.environ.get("E2E_ACCEL", "tcg")
    full_append = " ".join(x for x in (append, extra_append) if x)
    # -no-reboot: a guest that reboots ends its qemu process, and the harness starts the next one on the same
    # disk and seed (below). A reboot inside one process sometimes took 30-80 s under TCG between the
    # kernel's "Restarting system" and the next kernel's first line (seen in two of twelve two-boot runs on a
    # busy host; about 1 s as a rule); a new process starts in about a second every time.
    qemu_args = [
        qemu,
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-accel", "tcg,thread=multi" if accel == "tcg" else accel,
        "-smp", str(smp), "-m", str(memory_mib),
        "-kernel", str(image.kernel), "-append", full_append,
        "-drive", f"file={overlay},if=none,id=root,format=qcow2",
        "-device", "nvme,drive=root,serial=e2e",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
        "-device", "virtio-rng-pci",
        "-nic", "none",
        "-serial", "stdio",
        "-no-reboot",
    ]
    log = workdir / f"{name}.serial.log"
    lines: List[Tuple[float, str]] = []
    started = time.monotonic()
    with open(log, "w", encoding="utf-8", errors="replace") as out:
        while True:
            # The run's time-out covers all of its boots: each process gets what is left of it.
            left = max(1, int(timeout_s - (time.monotonic() - started)))
            cmd = ["timeout", "--kill-after=10", str(left), *qemu_args]
            out.write(f"# {shlex.join(cmd)}\n")
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert proc.stdout is not None
            panicked = rebooted = False
            for raw in proc.stdout:
                t = time.monotonic() - started
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # systemd's colour codes
                lines.append((t, text))
                out.write(f"[{t:8.3f}] {text}\n")
                out.flush()
                if _PANIC in text:
                    panicked = True
                    proc.terminate()  # timeout passes it on to qemu: no point waiting for the time-out
                rebooted = rebooted or _REBOOTING in text
            rc = proc.wait()
            if rc != 0 or panicked or not rebooted:
                break
    elapsed = time.monotonic() - started
    shutil.rmtree(seed_dir, ignore_errors=True)
    run = Run(name=name, log=log, elapsed_s=elapsed, accel=accel, append=full_append, lines=lines)
    _parse(run)
    if retry and crashed_before_init([text for _, text in lines]):
        raise EarlyKernelCrash(
            f"kernel panic before init after {elapsed:.0f}s; serial log {log}", log, overlay
        )
    if any(_PANIC in text for _, text in lines):
        raise KernelPanic(f"kernel panic after {elapsed:.0f}s ({name}); serial log {log}:\n{run.tail()}")
    if rc != 0:
        why = "timed out" if rc in (124, 137) else f"exited with {rc}"
        raise QemuError(f"qemu {why} after {elapsed:.0f}s ({name}); serial log {log}:\n{run.tail()}")
    if not run.boots:
        raise QemuError(
            f"{name}: the guest reported nothing (no E2E-RESULT lines); serial log {log}:\n{run.tail()}"
        )
    return run


def _parse(run: Run) -> None:
    for t, text in run.lines:
        m = _RESULT.search(text)
        if m:
            n, key, value = int(m.group(1)), m.group(2), m.group(3)
            run.boots.setdefault(n, {})[key] = value
            if key == "phase" and value == "start":
                run.boot_host_s[n] = t
            continue
        for tag, sink in (("E2E-STORM ", run.storm), ("E2E-MEM ", run.mem)):
            i = text.find(tag)
            if i >= 0:
                sink.append(dict(_KV.findall(text[i + len(tag):])))
        i = text.find("E2E-STORM-KERNEL ")
        if i >= 0:
            run.storm_kernel.append(text[i + len("E2E-STORM-KERNEL "):])
            continue
        i = text.find("E2E-STORM-ERROR ")
        if i >= 0:
            run.storm_errors.append(text[i:])
        i = text.find("E2E-STORM-BEGIN ")
        if i >= 0:
            run.storm_begin = dict(_KV.findall(text[i:]))
        m = _SAMPLE.search(text)
        if m:
            run.samples.append(Sample(*m.groups()))
        for tag, attr in (("E2E-SAMPLER ", "sampler"), ("E2E-SAMPLE-CPU ", "sample_cpu")):
            i = text.find(tag)
            if i >= 0:
                setattr(run, attr, dict(_KV.findall(text[i + len(tag):])))


@dataclass
class Sample:
    """One sample the sampler published in the storm boot: ``tag`` (``pre run=SPEC``, ``mid run=SPEC``,
    ``post run=SPEC``, ``drift-...``), whether what it printed is what the listener caught (``same``: yes, no,
    or - for the one taken inside the burst), its console line (``said``, - for none), and the datagram."""

    tag: str
    same: str
    said: str
    datagram: str

    @property
    def metrics(self) -> Dict[str, int]:
        """metric name -> value of the datagram's lines (``Name:value|type[|#tags]``)."""
        return {name: int(value) for name, value, _, _ in _statsd_lines(self.datagram)}

    @property
    def owner(self) -> str:
        """The ``Owner`` tag of the datagram's ``AuditSocketOwner`` line ("" when there is none)."""
        return next((tags["Owner"] for *_, tags in _statsd_lines(self.datagram) if "Owner" in tags), "")


def _statsd_lines(datagram: str) -> list:
    """The datagram as the listener kept it (lines joined by ``;``; ``-`` for none caught), parsed by the one
    StatsD reader of the harness."""
    from .statsd_agent import parse

    return [] if datagram == "-" else parse(datagram.replace(";", "\n"))


_SAMPLE = re.compile(r"E2E-STATSD tag=(.*?) same=(\S+) said=(.*) datagram=(\S*)$")


def audit_status(report: Dict[str, str]) -> Dict[str, str]:
    return {k[len("audit."):]: v for k, v in report.items() if k.startswith("audit.")}


def files(report: Dict[str, str]) -> Dict[str, Dict[str, object]]:
    """path -> {sha256, mode, owner, size, content} from the reporter's file:/b64: lines."""
    import base64

    out: Dict[str, Dict[str, object]] = {}
    for key, value in report.items():
        if key.startswith("file:"):
            sha, mode, owner, size, mtime = value.split()
            out.setdefault(key[5:], {}).update(sha256=sha, mode=int(mode, 8), owner=owner, size=int(size),
                                               mtime=int(mtime))
        elif key.startswith("b64:"):
            out.setdefault(key[4:], {})["content"] = base64.b64decode(value).decode("utf-8", "replace")
    return out


def outputs(report: Dict[str, str]) -> List[str]:
    """Lines the user data printed (block and user's lines), in order, from cloud-init-output.log."""
    n = int(report.get("output_lines", "0"))
    return [report[f"output.{i}"] for i in range(1, n + 1)]
