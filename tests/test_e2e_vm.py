"""The qemu harness's crash handling (e2e/vm.py), on recorded serial logs: no VM is booted here."""

from pathlib import Path

from e2e import vm

CONSOLE = Path(__file__).parent / "data" / "console"


def _lines(name: str) -> list:
    return (CONSOLE / name).read_text(encoding="utf-8", errors="replace").splitlines()


def test_a_panic_of_the_kernel_before_init_is_an_early_crash():
    # Debian 13's kernel under TCG: an int3 Oops in sched_clock_cpu at 2.8 s, before any process ran.
    lines = _lines("trixie-early-panic.serial.log")
    assert any("Kernel panic - not syncing" in line for line in lines)
    assert vm.crashed_before_init(lines)


def test_a_boot_that_reached_its_processes_is_not_an_early_crash():
    lines = [line.split("] ", 1)[-1] for line in _lines("debian12-kept-larger.serial.log")]
    assert not vm.crashed_before_init(lines)
    # A panic after the guest's processes ran (the disk may have changed) is not retried either.
    assert not vm.crashed_before_init(lines + ["[ 99.0] Kernel panic - not syncing: Attempted to kill init!"])
