"""The sampler (issue 17): ``userdata/audit-backlog.sh`` mode ``sample``, the timer apply/install mode
installs with ``CAB_MONITOR``, and apply's report of another audit socket owner, on fixture roots.

The real script runs (standalone, as the rendered block, as the SSM run command) with the fake ``auditctl``
of tests/boot/fakes.py, whose ``-s`` shows the fixture kernel's backlog, lost counter, pid and
backlog_wait_time_actual; the socket owner's command is ``proc/PID/comm`` under the root. A real UDP socket in
the test receives what the sampler sends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdk_audit_backlog.testing import OWNER_LINE_RE
from cdk_audit_backlog.user_data import BlockInputs, render_block, render_run_command
from e2e.statsd_agent import parse
from tests.boot import fakes
from tests.boot import fixtures as fx

PREFIX = "cdk-audit-backlog: "
COPY = "usr/local/sbin/cdk-audit-backlog"
ENV = "etc/cdk-audit-backlog.env"
SERVICE = "etc/systemd/system/cdk-audit-backlog-sample.service"
TIMER = "etc/systemd/system/cdk-audit-backlog-sample.timer"
WANTS = "etc/systemd/system/timers.target.wants/cdk-audit-backlog-sample.timer"
RUN = "run/cdk-audit-backlog"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture
def udp():
    """A StatsD listener stand-in: a UDP socket on 127.0.0.1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def datagrams(s: socket.socket, first_wait: float = 5.0) -> list[str]:
    """Every datagram that arrives: the first within first_wait, then until 0.3 s pass without one."""
    out = []
    s.settimeout(first_wait)
    try:
        while True:
            out.append(s.recv(65536).decode())
            s.settimeout(0.3)
    except socket.timeout:
        return out


def rhel9(tmp_path: Path, name: str = "rhel9", **kernel) -> Path:
    """A RHEL 9 layout (audit 3: auditctl -s shows backlog_wait_time_actual), auditd owning the socket."""
    root = tmp_path / name
    fx.build(root, name)
    if kernel:
        fx.set_kernel(root, **kernel)
    return root


def sample(root: Path, sandbox: Path, statsd: str | None, script: Path | None = None, **inputs):
    """One run of mode sample (as the timer runs it: ``/bin/bash SCRIPT sample``)."""
    env = fx.script_env(root, sandbox, **inputs)
    if statsd is not None:
        env["CAB_STATSD"] = statsd
    return subprocess.run(
        [str(sandbox / "bash"), str(script or fx.SCRIPT), "sample"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def addr(s: socket.socket) -> str:
    return "127.0.0.1:%d" % s.getsockname()[1]


def metrics(text: str) -> dict:
    """{name: value} of StatsD lines NAME:VALUE|TYPE[|#TAG]."""
    return {name: value for name, value, _, _ in parse(text)}


def sampled(root, sandbox, udp, **inputs) -> tuple[dict, str]:
    """(the metrics of the one datagram a sample sent, its stderr); stdout must be that datagram."""
    r = sample(root, sandbox, addr(udp), **inputs)
    assert r.returncode == 0, r.stdout + r.stderr
    got = datagrams(udp)
    assert len(got) == 1, got
    assert got[0] == r.stdout, (got, r.stdout)
    return metrics(got[0]), r.stderr


def b_calls(root) -> list[str]:
    return [c for c in fx.calls(root) if c.startswith("auditctl -b")]


# -- what one sample sends -------------------------------------------------------------------------------


def test_one_datagram_with_every_metric_equal_to_what_it_prints(tmp_path, sandbox, udp):
    root = rhel9(tmp_path, backlog=2048, lost=5, backlog_wait_time_actual=17)
    fx.clear_calls(root)
    r = sample(root, sandbox, addr(udp), target=8192)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (dgram,) = datagrams(udp)
    assert dgram == r.stdout
    assert dgram.splitlines() == [
        "AuditLostEvents:5|c",
        "AuditBacklog:2048|g",
        "AuditBacklogLimit:8192|g",
        "AuditBacklogUsePercent:25|g",
        "AuditBacklogWaitTime:60000|g",  # RHEL's rules: --backlog_wait_time 60000
        "AuditBacklogWaitTimeActual:17|g",
        "AuditBacklogTarget:8192|g",
        "AuditBacklogDrift:0|g",
        "AuditSocketOwner:1|g|#Owner:auditd",
    ]
    assert fx.calls(root) == ["auditctl -s"]  # exactly one status read, nothing else


def test_wait_time_actual_only_where_the_kernel_reports_it(tmp_path, sandbox, udp):
    root = tmp_path / "al2"
    fx.build(root, "al2")  # audit 2.8: no backlog_wait_time_actual line
    m, _ = sampled(root, sandbox, udp, target=8192)
    assert "AuditBacklogWaitTime" in m and "AuditBacklogWaitTimeActual" not in m
    legacy = tmp_path / "legacy"
    fx.build(legacy, "rhel9", status_format="legacy")  # one AUDIT_STATUS: line, no wait times at all
    m, _ = sampled(legacy, sandbox, udp, target=8192)
    assert "AuditBacklogWaitTime" not in m and "AuditBacklogWaitTimeActual" not in m
    assert m["AuditBacklogLimit"] == "8192" and m["AuditSocketOwner"] == "1"


def test_lost_increase_across_samples_after_a_reset_and_after_a_boot(tmp_path, sandbox, udp):
    root = rhel9(tmp_path, lost=5)
    seen = []
    for lost in (5, 12, 12, 3, 10):  # 3: the counter went down (reset)
        fx.set_kernel(root, lost=lost)
        seen.append(sampled(root, sandbox, udp, target=8192)[0]["AuditLostEvents"])
    assert seen == ["5", "7", "0", "3", "7"]
    shutil.rmtree(root / RUN)  # /run is a tmpfs: a boot empties it
    fx.set_kernel(root, lost=4)
    assert sampled(root, sandbox, udp, target=8192)[0]["AuditLostEvents"] == "4"
    assert (root / RUN / "lost").read_text() == "4\n"  # one small file, the last counter


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(0, 2**31 - 1),
    backlog=st.integers(0, 300000),
    target=st.integers(1, 2**31 - 1),
)
def test_use_percent_and_drift_follow_their_definitions(tmp_path_factory, sandbox, limit, backlog, target):
    root = tmp_path_factory.mktemp("h") / "rhel9"
    fx.build(root, "rhel9")
    # another owner: the sample never changes its limit, so every case is one plain reading
    fx.set_kernel(root, backlog_limit=limit, backlog=backlog, pid=812)
    fakes.set_comm(root, 812, "auditbeat")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        m, _ = sampled(root, sandbox, s, target=target)
    assert m["AuditBacklogUsePercent"] == str(backlog * 100 // limit if limit else 0)
    assert m["AuditBacklogDrift"] == str(target - limit if 0 < limit < target else 0)
    assert m["AuditBacklogTarget"] == str(target) and m["AuditBacklogLimit"] == str(limit)


def test_target_comes_from_the_state_file_then_the_inputs(tmp_path, sandbox, udp):
    root = rhel9(tmp_path)
    # no state file: the inputs; auto computes it from MemTotal (8 GiB -> 8192)
    assert sampled(root, sandbox, udp, target="auto")[0]["AuditBacklogTarget"] == "8192"
    r = fx.run_script(root, sandbox, target=16384)
    assert r.returncode == 0, r.stdout
    # the state file's target (what the apply run chose) wins over the inputs
    assert sampled(root, sandbox, udp, target=1024)[0]["AuditBacklogTarget"] == "16384"


# -- drift -----------------------------------------------------------------------------------------------


def test_drift_under_auditd_is_restored_once_per_boot_and_reported_once(tmp_path, sandbox, udp):
    root = rhel9(tmp_path)
    fx.set_kernel(root, backlog_limit=1024)
    fx.clear_calls(root)
    m, err = sampled(root, sandbox, udp, target=8192)
    # the datagram is the sample (the drift as found), the restore follows it
    assert m["AuditBacklogDrift"] == "7168" and m["AuditBacklogLimit"] == "1024"
    assert err == PREFIX + "drift: auditd (pid 4242) has backlog_limit 1024, our target 8192: restored\n"
    assert b_calls(root) == ["auditctl -b 8192"] and fx.kernel(root)["backlog_limit"] == 8192
    m, err = sampled(root, sandbox, udp, target=8192)
    assert m["AuditBacklogDrift"] == "0" and err == ""
    # a second drift in the same boot is reported, not restored
    fx.set_kernel(root, backlog_limit=1024)
    fx.clear_calls(root)
    m, err = sampled(root, sandbox, udp, target=8192)
    assert err == (
        PREFIX + "drift: auditd (pid 4242) has backlog_limit 1024, our target 8192: restored once this boot "
        "already, left\n"
    )
    assert b_calls(root) == [] and fx.kernel(root)["backlog_limit"] == 1024
    # the same drift on the next sample: nothing on the console
    _, err = sampled(root, sandbox, udp, target=8192)
    assert err == "" and b_calls(root) == []
    # a new boot (empty /run) restores again
    shutil.rmtree(root / RUN)
    _, err = sampled(root, sandbox, udp, target=8192)
    assert err.endswith(": restored\n") and b_calls(root) == ["auditctl -b 8192"]


def test_no_socket_owner_counts_as_ours(tmp_path, sandbox, udp):
    root = rhel9(tmp_path, backlog_limit=64, pid=0)
    r = sample(root, sandbox, addr(udp), target=8192)
    assert "AuditSocketOwner:1|g|#Owner:none" in datagrams(udp)[0].splitlines()
    assert r.stderr == PREFIX + "drift: none (pid 0) has backlog_limit 64, our target 8192: restored\n"


@pytest.mark.parametrize("owner", ["auditbeat", "osqueryd", "go-audit", "my agent:1"])
def test_another_owner_is_never_fought(tmp_path, sandbox, udp, owner):
    root = rhel9(tmp_path, backlog_limit=4096, pid=812)
    fakes.set_comm(root, 812, owner)
    tag = owner.replace(" ", "_").replace(":", "_")  # a StatsD tag cannot hold them
    fx.clear_calls(root)
    r = sample(root, sandbox, addr(udp), target=8192)
    (dgram,) = datagrams(udp)
    assert f"AuditSocketOwner:1|g|#Owner:{tag}" in dgram.splitlines()
    assert r.stderr == (
        f"{PREFIX}drift: {tag} (pid 812) has backlog_limit 4096, our target 8192: left to it\n"
    )
    for _ in range(2):  # the timer's next samples: not restored, not repeated
        _, err = sampled(root, sandbox, udp, target=8192)
        assert err == ""
    assert b_calls(root) == [] and fx.kernel(root)["backlog_limit"] == 4096
    # the owner changes its limit: one new line
    fx.set_kernel(root, backlog_limit=2048)
    _, err = sampled(root, sandbox, udp, target=8192)
    assert err == f"{PREFIX}drift: {tag} (pid 812) has backlog_limit 2048, our target 8192: left to it\n"
    assert b_calls(root) == []


def test_immutable_rules_are_never_touched(tmp_path, sandbox, udp):
    root = rhel9(tmp_path, backlog_limit=1024, enabled=2)
    fx.clear_calls(root)
    _, err = sampled(root, sandbox, udp, target=8192)
    assert err == (
        PREFIX + "drift: auditd (pid 4242) has backlog_limit 1024, our target 8192: immutable, left for the "
        "next boot\n"
    )
    _, err = sampled(root, sandbox, udp, target=8192)
    assert err == ""
    assert b_calls(root) == [] and fx.calls(root) == ["auditctl -s", "auditctl -s"]
    assert not (root / RUN / "restored").exists()


def test_drift_line_again_after_the_drift_was_gone(tmp_path, sandbox, udp):
    root = rhel9(tmp_path, backlog_limit=4096, pid=812)
    fakes.set_comm(root, 812, "auditbeat")
    assert sampled(root, sandbox, udp, target=8192)[1] != ""
    fx.set_kernel(root, backlog_limit=8192)
    assert sampled(root, sandbox, udp, target=8192)[1] == ""
    fx.set_kernel(root, backlog_limit=4096)
    assert sampled(root, sandbox, udp, target=8192)[1].endswith("left to it\n")


# -- harmless without a listener or a status -------------------------------------------------------------


def test_nothing_listening_is_silent_and_harmless(tmp_path, sandbox):
    root = rhel9(tmp_path)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    for _ in range(2):  # the second send to a closed port is the one the kernel refuses
        r = sample(root, sandbox, f"127.0.0.1:{port}", target=8192)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert metrics(r.stdout)["AuditBacklogLimit"] == "8192"
    # nothing written outside the sampler's /run directory
    assert sorted(p.name for p in (root / RUN).iterdir()) == ["lost"]


def test_no_auditctl_says_so_once_and_exits_3(tmp_path, sandbox, udp):
    root = tmp_path / "u"
    fx.build(root, "ubuntu2204-no-auditd")
    for expected in (PREFIX + "sample: no audit status (auditctl -s)\n", ""):
        r = sample(root, sandbox, addr(udp), target=8192)
        assert r.returncode == 3 and r.stdout == "" and r.stderr == expected
    assert datagrams(udp, first_wait=0.3) == []


# -- installing the sampler ------------------------------------------------------------------------------


def user_data(**inputs) -> str:
    return "#!/bin/bash\n" + render_block(BlockInputs(**inputs)) + "echo user-line\n"


@pytest.mark.parametrize("unit", ["auto", "off"])
def test_the_block_installs_the_sampler_idempotently(tmp_path, sandbox, udp, unit):
    root = rhel9(tmp_path)
    text = user_data(target=16384, source="m5.xlarge/16384MiB", boot_unit=unit, monitor_interval=30)
    assert "/bin/bash -c 'f=$(mktemp)" in text  # runs from a file, which it installs
    r = fx.run_user_data_ok(root, sandbox, text)
    assert PREFIX + "monitor: sampler every 30s installed" in r.stdout.splitlines()
    assert (root / SERVICE).read_text().splitlines() == [
        "[Unit]",
        "Description=cdk-audit-backlog sampler",
        "[Service]",
        "Type=oneshot",
        "ExecStart=/bin/bash /usr/local/sbin/cdk-audit-backlog sample",
        # the datagram's lines go nowhere; a drift line reaches the journal and the console
        "StandardOutput=null",
        "StandardError=journal+console",
    ]
    assert (root / TIMER).read_text().splitlines() == [
        "[Unit]",
        "Description=cdk-audit-backlog sampler every 30s",
        "[Timer]",
        "OnBootSec=30",
        "OnUnitActiveSec=30",
        "AccuracySec=1s",
        "[Install]",
        "WantedBy=timers.target",
    ]
    link = root / WANTS
    assert link.is_symlink() and str(link.readlink()) == "/" + TIMER
    assert (root / COPY).read_text() == fx.block_body(text)
    env = (root / ENV).read_text().splitlines()
    assert env[-1] == "CAB_MONITOR=30" and env.count("CAB_MONITOR=30") == 1
    if unit == "auto":  # the boot unit's file, with the sampler's line
        assert env[0] == "CAB_TARGET=auto" and "CAB_SOURCE=boot" in env
    else:
        assert env == ["CAB_TARGET=16384", "CAB_FRACTION_PPM=10000", "CAB_MIN=320", "CAB_MAX=262144",
                       "CAB_MONITOR=30"]  # fmt: skip
    starts = [c for c in fx.calls(root) if c.startswith("systemctl")]
    assert starts == [
        "systemctl daemon-reload",
        "systemctl --no-block restart cdk-audit-backlog-sample.timer",
    ]
    # a rerun changes nothing: no file (nor its mtime), no systemctl
    before = fx.tree_digest(root)
    fx.clear_calls(root)
    again = fx.run_user_data_ok(root, sandbox, text)
    assert PREFIX + "monitor: sampler every 30s up to date" in again.stdout.splitlines()
    assert fx.tree_digest(root) == before
    assert [c for c in fx.calls(root) if not c.startswith("auditctl -s")] == []
    # the installed copy is what the timer runs
    fx.set_kernel(root, backlog=100)
    r = sample(root, sandbox, addr(udp), script=root / COPY)
    assert r.returncode == 0, r.stderr
    (dgram,) = datagrams(udp)
    assert dgram == r.stdout and "AuditBacklogTarget:16384|g" in dgram.splitlines()


def test_an_interval_change_rewrites_the_timer_and_restarts_it(tmp_path, sandbox):
    root = rhel9(tmp_path)
    fx.run_user_data_ok(root, sandbox, user_data(target=8192, monitor_interval=60))
    fx.clear_calls(root)
    r = fx.run_user_data_ok(root, sandbox, user_data(target=8192, monitor_interval=300))
    assert PREFIX + "monitor: sampler every 300s installed" in r.stdout.splitlines()
    assert "OnUnitActiveSec=300" in (root / TIMER).read_text().splitlines()
    assert "CAB_MONITOR=300" in (root / ENV).read_text().splitlines()
    assert "systemctl --no-block restart cdk-audit-backlog-sample.timer" in fx.calls(root)


def test_blocks_without_monitoring_install_no_sampler(tmp_path, sandbox):
    root = rhel9(tmp_path)
    text = user_data(target=8192, boot_unit="auto")
    assert "cab_sample" not in text and "CAB_MONITOR" not in text
    r = fx.run_user_data_ok(root, sandbox, text)
    assert "monitor" not in r.stdout
    assert not (root / TIMER).exists() and not (root / RUN).exists()
    assert "CAB_MONITOR" not in (root / ENV).read_text()


def test_not_installed_without_systemd(tmp_path, sandbox):
    root = tmp_path / "al1"
    fx.build(root, "al1")  # SysV
    r = fx.run_user_data_ok(root, sandbox, user_data(target=8192, monitor_interval=60))
    assert PREFIX + "monitor: not installed (needs systemd, a script file)" in r.stdout.splitlines()
    assert not (root / "etc/systemd").exists()


def test_install_mode_installs_unit_and_sampler(tmp_path, sandbox):
    root = rhel9(tmp_path)
    for word in ("installed", "up to date"):
        r = fx.run_script(root, sandbox, args=("install",), target="auto", unit="auto", monitor=45)
        assert r.returncode == 0, r.stdout + r.stderr
        assert said(r.stdout) == [f"unit: {word} (boot target auto)", f"monitor: sampler every 45s {word}"]
    assert (root / COPY).read_text() == fx.SCRIPT.read_text()
    assert (root / ENV).read_text().splitlines()[-1] == "CAB_MONITOR=45"


def said(stdout: str) -> list[str]:
    return [line[len(PREFIX) :] for line in stdout.splitlines() if line.startswith(PREFIX)]


def test_standalone_without_monitor_behaves_as_before(tmp_path, sandbox):
    root = rhel9(tmp_path, pid=812)
    fakes.set_comm(root, 812, "auditbeat")
    r = fx.run_script(root, sandbox, target=16384)
    assert r.returncode == 0 and "owner" not in r.stdout and "monitor" not in r.stdout
    assert fx.kernel(root)["backlog_limit"] == 16384


# -- apply and another owner -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit,status,says",
    [
        (4096, 7, "is below our target 16384: left to it"),
        (32768, 0, "agrees with our target 16384: left to it"),
        (0, 0, "agrees with our target 16384: left to it"),
    ],
)
def test_apply_names_another_owner_and_leaves_its_limit(tmp_path, sandbox, limit, status, says):
    root = rhel9(tmp_path, backlog_limit=limit, pid=977)
    fakes.set_comm(root, 977, "osqueryd")
    fx.clear_calls(root)
    r = fx.run_script(root, sandbox, target=16384, monitor=60)
    assert r.returncode == status, r.stdout + r.stderr
    line = f"owner: osqueryd (pid 977) has the audit socket, its backlog_limit {limit} {says}"
    assert line in said(r.stdout)
    # the readers (verify, report) parse the very line the script printed
    (printed,) = [x for x in r.stdout.splitlines() if "owner: " in x]
    m = OWNER_LINE_RE.search(printed)
    assert m and (m["owner"], m["pid"], m["limit"], m["target"]) == ("osqueryd", "977", str(limit), "16384")
    assert b_calls(root) == [] and fx.kernel(root)["backlog_limit"] == limit
    assert "verify failed" not in r.stdout
    # persisted for auditd's next boot all the same
    assert "-b 16384" in (root / "etc/audit/rules.d/zz-cdk-audit-backlog.rules").read_text()


def test_apply_under_auditd_says_nothing_about_owners(tmp_path, sandbox):
    root = rhel9(tmp_path)
    r = fx.run_script(root, sandbox, target=16384, monitor=60)
    assert r.returncode == 0 and not any(s.startswith("owner:") for s in said(r.stdout))
    assert fx.kernel(root)["backlog_limit"] == 16384


# -- the SSM run command ---------------------------------------------------------------------------------


def test_run_command_installs_the_sampler_and_keeps_the_exit_status(tmp_path, sandbox):
    lines = render_run_command(BlockInputs(source="ssm-association", monitor_interval=120))
    assert lines[0].startswith("/bin/bash -c 'f=$(mktemp)") and "exit $r" in lines[0]
    root = rhel9(tmp_path)
    r = fx.run_ssm_step(tmp_path, lines, root, sandbox)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "monitor: sampler every 120s installed" in said(r.stdout)
    assert (root / COPY).read_text() == "\n".join(lines[1:-1]) + "\n"
    assert (root / ENV).read_text().splitlines()[0] == "CAB_TARGET=auto"
    # another owner below the target: the step fails with 7, as SSM must see it
    fx.set_kernel(root, backlog_limit=1024, pid=812)
    fakes.set_comm(root, 812, "go-audit")
    r = fx.run_ssm_step(tmp_path, lines, root, sandbox)
    assert r.returncode == 7, r.stdout + r.stderr
    # no auditctl at all: 3, as without the sampler
    for cmd in ("auditctl", "augenrules"):
        (root / "sbin" / cmd).unlink()
    assert fx.run_ssm_step(tmp_path, lines, root, sandbox).returncode == 3
