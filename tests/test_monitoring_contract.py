"""The metric contract (``monitoring_metrics.py``) against what the sampler really sends.

The names and StatsD types are read from a datagram a run of ``audit-backlog.sh sample`` sent to a UDP socket
here, on a fixture kernel that reports every field (backlog_wait_time_actual included): not by searching the
script for names.
"""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from cdk_audit_backlog import monitoring_metrics as mm
from cdk_audit_backlog.user_data import script_text
from tests.boot import fakes
from tests.boot import fixtures as fx

# NAME:VALUE|TYPE, and for the owner |#TAG:VALUE (DataDog-style tags: the agent makes them dimensions)
LINE = re.compile(
    r"^(?P<name>[A-Za-z]+):(?P<value>[0-9]+)\|(?P<type>[cg])(?:\|#(?P<tag>[A-Za-z]+):(?P<tv>\S+))?$"
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


def sent(root, sandbox) -> list[str]:
    """The lines of the one datagram one sample sends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        env = fx.script_env(root, sandbox, target=8192)
        env["CAB_STATSD"] = "127.0.0.1:%d" % s.getsockname()[1]
        r = subprocess.run(
            [str(sandbox / "bash"), str(fx.SCRIPT), "sample"],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return s.recv(65536).decode().splitlines()


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract") / "rhel9"
    fx.build(root, "rhel9")  # audit 3: every field, backlog_wait_time_actual included
    fx.set_kernel(root, backlog=10, lost=2, backlog_wait_time_actual=3)
    return root


def test_every_metric_is_sent_with_its_type_and_nothing_else(full_root, sandbox):
    lines = sent(full_root, sandbox)
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    sent_types = {m["name"]: m["type"] for m in parsed}
    assert len(sent_types) == len(lines), "a metric sent twice"
    assert sent_types == {m.name: m.statsd_type for m in mm.METRICS}


def test_the_owner_is_the_only_tag_and_uses_the_contract_dimension(full_root, sandbox):
    tagged = [m for m in map(LINE.match, sent(full_root, sandbox)) if m["tag"]]
    assert [(m["name"], m["value"], m["tag"], m["tv"]) for m in tagged] == [
        ("AuditSocketOwner", "1", mm.OWNER_DIMENSION, "auditd")
    ]


@pytest.mark.parametrize("owner", mm.KNOWN_OWNERS)
def test_known_owners_are_published_by_their_name(tmp_path, sandbox, owner):
    root = tmp_path / "rhel9"
    fx.build(root, "rhel9")
    if owner == "none":
        fx.set_kernel(root, pid=0)
    else:
        fx.set_kernel(root, pid=700)
        fakes.set_comm(root, 700, owner)
    owners = [m["tv"] for m in map(LINE.match, sent(root, sandbox)) if m["tag"] == mm.OWNER_DIMENSION]
    assert owners == [owner]


def test_default_address_and_interval_bounds_are_the_scripts():
    text = script_text()
    assert "${CAB_STATSD:-%s}" % mm.STATSD_ADDRESS in text
    assert mm.MIN_INTERVAL_S <= mm.DEFAULT_INTERVAL_S <= mm.MAX_INTERVAL_S


def test_the_contract_test_would_catch_a_renamed_metric(full_root, sandbox):
    """The comparison above fails for a datagram with one name changed (so it can fail)."""
    lines = sent(full_root, sandbox)
    renamed = [line.replace("AuditBacklogDrift", "AuditDrift") for line in lines]
    got = {m["name"]: m["type"] for m in map(LINE.match, renamed)}
    assert got != {m.name: m.statsd_type for m in mm.METRICS}
