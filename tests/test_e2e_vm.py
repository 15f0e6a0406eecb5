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


def _panicking_once(monkeypatch, calls):
    """``_boot_once`` that panics after init on its first call and returns a run on the second."""

    def fake_boot_once(image, *, name, workdir, overlay, retry=True, **kwargs):
        calls.append({"overlay": overlay, "retry": retry, "disk_there": (workdir / f"{name}.qcow2").exists()})
        if len(calls) == 1:
            (workdir / f"{name}.qcow2").write_text("the first attempt's disk")
            (workdir / f"{name}.serial.log").write_text("... Kernel panic - not syncing\n")
            raise vm.KernelPanic(f"kernel panic after 21s ({name}); serial log\n...")
        return "second run"

    monkeypatch.setattr(vm, "_boot_once", fake_boot_once)
    monkeypatch.setattr(vm, "_log_run", lambda run, image: None)


def test_a_later_panic_in_a_run_on_its_own_disk_reruns_the_whole_run_on_a_fresh_disk(monkeypatch, tmp_path):
    calls: list = []
    _panicking_once(monkeypatch, calls)
    run = vm.boot(None, name="immutable", workdir=tmp_path, user_data=b"", instance_id="i-1")
    assert run == "second run"
    assert [c["overlay"] for c in calls] == [None, None]  # both runs make their own disk
    assert calls[1] == {"overlay": None, "retry": False, "disk_there": False}  # the first disk is gone
    assert (tmp_path / "immutable.serial.crashed.log").exists()


def test_a_later_panic_on_an_earlier_runs_disk_fails(monkeypatch, tmp_path):
    calls: list = []
    _panicking_once(monkeypatch, calls)
    disk = tmp_path / "debian-1.qcow2"
    try:
        vm.boot(None, name="rerun", workdir=tmp_path, user_data=b"", instance_id="i-2", overlay=disk)
    except vm.KernelPanic as panic:
        assert "kernel panic" in str(panic)
    else:
        raise AssertionError("a panic on a disk an earlier run changed must fail, not be retried")
    assert len(calls) == 1


def test_a_sample_line_reads_its_datagram_with_the_one_statsd_reader():
    """The storm boot's ``E2E-STATSD`` lines: the datagram as the guest's listener kept it (``;`` between
    lines)."""
    line = ("E2E-STATSD tag=pre run=320:0:1000:5 same=yes said=cdk-audit-backlog: drift: x "
            "datagram=AuditLostEvents:3|c;AuditBacklog:0|g;AuditSocketOwner:1|g|#Owner:go-audit")
    run = vm.Run(name="t", log=Path("t.log"), elapsed_s=0, accel="tcg", append="", lines=[(0.0, line)])
    vm._parse(run)
    (sample,) = run.samples
    assert (sample.tag, sample.same) == ("pre run=320:0:1000:5", "yes")
    assert sample.said == "cdk-audit-backlog: drift: x"
    assert sample.metrics == {"AuditLostEvents": 3, "AuditBacklog": 0, "AuditSocketOwner": 1}
    assert sample.owner == "go-audit"
    assert vm.Sample("mid", "-", "-", "-").metrics == {} and vm.Sample("mid", "-", "-", "-").owner == ""
