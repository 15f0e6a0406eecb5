"""Other owners of the audit socket (auditbeat, osqueryd, go-audit): the readers of ``verify``, ``report``
and ``plan --owners``.

The script's console line naming another owner is still being worded; the reader is one regex constant,
``testing.OWNER_LINE_RE``, tolerant of the wording around the facts it needs.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

import moto.ec2.responses.general as moto_general
from cdk_audit_backlog import testing, verify
from cdk_audit_backlog.plan import OWNER_SETTINGS, owner_settings

from .test_cli import _deploy, run, shell

BRIEF_LINE = ("cdk-audit-backlog: owner: auditbeat (pid 812) controls the audit socket; its backlog_limit "
              "4096, our target 8192")


@pytest.fixture(autouse=True)
def _dummy_aws(dummy_aws):
    """Every test here talks to moto only."""


# ------------------------------------------------------------------------------------- console line


def test_the_owner_line_as_the_brief_words_it():
    o = verify.parse_console_owner("[   9.1] cloud-init[612]: " + BRIEF_LINE + "\r\n")
    assert (o.owner, o.pid, o.limit, o.target) == ("auditbeat", 812, 4096, "8192")
    assert o.line.endswith("our target 8192")


@pytest.mark.parametrize("line, expected", [
    ("cdk-audit-backlog: owner: osqueryd controls the audit socket", ("osqueryd", None, None, None)),
    ("cdk-audit-backlog: owner: go-audit (pid 77): backlog_limit=0 target=auto", ("go-audit", 77, 0, "auto")),
    ("cdk-audit-backlog: owner: auditbeat, pid 5 (pid 5) holds it; backlog_limit: 8192; target: 16384",
     ("auditbeat", 5, 8192, "16384")),
])
def test_the_owner_reader_tolerates_other_wordings(line, expected):
    o = verify.parse_console_owner(line)
    assert (o.owner, o.pid, o.limit, o.target) == expected


def test_auditd_is_ours_and_the_last_owner_line_wins():
    assert verify.parse_console_owner("cdk-audit-backlog: owner: auditd (pid 1) controls the audit socket") \
        is None
    assert verify.parse_console_owner(None) is None
    log = BRIEF_LINE + "\nnoise\ncdk-audit-backlog: owner: osqueryd (pid 9) controls the audit socket; " \
        "its backlog_limit 8192, our target 8192\n"
    assert verify.parse_console_owner(log).owner == "osqueryd"


@given(prefix=st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=40),
       owner=st.sampled_from(["auditbeat", "osqueryd", "go-audit", "my-agent.v2"]),
       pid=st.integers(1, 4194304), limit=st.integers(0, 2**31 - 1))
def test_the_owner_reader_finds_the_facts_behind_any_prefix(prefix, owner, pid, limit):
    line = (f"{prefix}cdk-audit-backlog: owner: {owner} (pid {pid}) controls the audit socket; "
            f"its backlog_limit {limit}, our target 8192")
    o = verify.parse_console_owner(line)
    assert (o.owner, o.pid, o.limit, o.target) == (owner, pid, limit, "8192")


def test_owner_verdict_says_whether_it_agrees():
    assert verify.owner_verdict("auditbeat", 4096, 8192)[0] is True
    below, said = verify.owner_verdict("auditbeat", 4096, 8192)
    assert "< policy 8192: set 8192 in auditbeat's own configuration" in said
    assert verify.owner_verdict("osqueryd", 8192, 8192) == (
        False, "osqueryd owns the audit socket and sets backlog_limit 8192, which agrees with the policy")
    assert "above the policy's 8192" in verify.owner_verdict("go-audit", 16384, 8192)[1]
    assert verify.owner_verdict("osqueryd", 0, 8192)[0] is False  # 0: no limit, never below
    assert "compare with plan" in verify.owner_verdict("osqueryd", 4096, None)[1]


# ------------------------------------------------------------------------------------- verify (moto)


@pytest.mark.parametrize("owner_limit, status, said", [
    (512, "below-policy",
     "auditbeat (pid 812) owns the audit socket and sets backlog_limit 512 < policy 1024"),
    (1024, "tuned", "auditbeat (pid 812) owns the audit socket and sets backlog_limit 1024, which agrees"),
    (4096, "tuned", "above the policy's 1024"),
])
@mock_aws
def test_verify_says_when_another_owner_sets_the_limit(monkeypatch, capsys, owner_limit, status, said):
    console = ("cdk-audit-backlog: backlog_limit 320 -> 1024 (raised; method auditctl; lost 0)\n"
               f"cdk-audit-backlog: owner: auditbeat (pid 812) controls the audit socket; its backlog_limit "
               f"{owner_limit}, our target 1024\n")
    # What EC2 returns is Base64 of the log; boto3 hands over moto's text as it stands.
    monkeypatch.setattr(moto_general, "SAMPLE_CONSOLE_OUTPUT", base64.b64encode(console.encode()).decode())
    _deploy({"Web": ("t3.micro", shell("1024"))}, with_asg=False)
    rc, out, _ = run(["verify", "--stack", "Fleet", "--region", "us-east-1", "--format", "json"], capsys)
    (row,) = json.loads(out)
    assert (row["owner"], row["owner_limit"], row["status"]) == ("auditbeat", owner_limit, status)
    assert said in (row["problem"] if status == "below-policy" else row["note"])
    assert row["applied"] == 1024
    assert rc == (1 if status == "below-policy" else 0)


@mock_aws
def test_verify_without_an_owner_line_is_unchanged(capsys):
    _deploy({"Web": ("t3.micro", shell("1024"))}, with_asg=False)
    rc, out, _ = run(["verify", "--stack", "Fleet", "--region", "us-east-1", "--format", "json"], capsys)
    (row,) = json.loads(out)
    assert rc == 0 and row["owner"] is None and row["owner_limit"] is None and row["note"] == ""


# ------------------------------------------------------------------------------------ report (cdk.out)


AUDITBEAT = ("cat > /etc/auditbeat/auditbeat.yml <<'EOF'\nauditbeat.modules:\n- module: auditd\n"
             "  socket_type: unicast\n  backlog_limit: {n}\nEOF\n")
OSQUERY = "echo '--audit_allow_config=true' > /etc/osquery/osquery.flags\n" \
          "echo '--audit_backlog_limit={n}' >> /etc/osquery/osquery.flags\n"
GO_AUDIT = "cat > /etc/go-audit.yaml <<'EOF'\nrules:\n  - -b {n}\n  - -a exit,always -S execve\nEOF\n"


def test_other_owner_settings_are_read_outside_the_block_only():
    user = shell("8192", AUDITBEAT.format(n=4096) + OSQUERY.format(n=8192) + GO_AUDIT.format(n=16384))
    assert testing.other_owner_settings(user) == {"auditbeat": 4096, "osqueryd": 8192, "go-audit": 16384}
    # A backlog_limit or -b item in a text that names no other owner is not one; nor is our block's -b.
    assert testing.other_owner_settings("#!/bin/bash\nbacklog_limit: 5\n  - -b 7\n") == {}
    assert testing.other_owner_settings(shell("8192", "# auditbeat comes later\n")) == {}


def test_report_says_which_owner_sets_what(tmp_path, capsys):
    out_dir = tmp_path / "cdk.out"
    out_dir.mkdir()
    meta = {"cdk-audit-backlog": {"limit": 8192, "instanceType": "m5.large", "memoryMiB": 8192,
                                  "reason": "policy"}}
    resources = {
        "Beat": {"Type": "AWS::EC2::Instance", "Metadata": meta,
                 "Properties": {"UserData": {"Fn::Base64": shell("8192", AUDITBEAT.format(n=4096))}}},
        "Osq": {"Type": "AWS::EC2::Instance", "Metadata": meta,
                "Properties": {"UserData": {"Fn::Base64": shell("8192", OSQUERY.format(n=8192))}}},
        "Plain": {"Type": "AWS::EC2::Instance", "Metadata": meta,
                  "Properties": {"UserData": {"Fn::Base64": shell("8192")}}},
    }
    (out_dir / "S.template.json").write_text(json.dumps({"Resources": resources}))
    rc, out, err = run(["report", str(out_dir), "--format", "json"], capsys)
    rows = {r["logical_id"]: r for r in json.loads(out)}
    assert rc == 0
    assert rows["Beat"]["owners"] == {"auditbeat": 4096}
    beat = rows["Beat"]["reason"]
    assert "auditbeat owns the audit socket and sets backlog_limit 4096 < policy 8192" in beat
    assert "osqueryd owns the audit socket and sets backlog_limit 8192, which agrees" in rows["Osq"]["reason"]
    assert rows["Plain"]["owners"] == {} and rows["Plain"]["reason"] == "policy"
    assert "report: 2 launch resource(s) configure another owner of the audit socket" in err


# ------------------------------------------------------------------------------------- plan --owners


def test_plan_owners_gives_each_owner_its_setting(capsys):
    rc, out, _ = run(["plan", "m5.large", "--owners"], capsys)
    assert rc == 0
    assert "auditbeat  backlog_limit: 8192" in out
    assert "osqueryd   --audit_backlog_limit=8192" in out
    assert "go-audit   - -b 8192" in out
    rc, out, _ = run(["plan", "m5.large", "t3.micro", "--owners", "--format", "json"], capsys)
    rows = json.loads(out)
    assert rows[1]["owner_settings"] == owner_settings(1024) == {
        "auditbeat": "backlog_limit: 1024", "osqueryd": "--audit_backlog_limit=1024", "go-audit": "- -b 1024"}
    assert set(OWNER_SETTINGS) == {"auditbeat", "osqueryd", "go-audit"}
    rc, out, _ = run(["plan", "m5.large"], capsys)
    assert "auditbeat" not in out  # only with --owners
    rc, out, _ = run(["plan", "no.such", "--owners", "--format", "json"], capsys)
    assert rc == 1 and json.loads(out)[0]["owner_settings"] == {o: None for o in OWNER_SETTINGS}
    # Each setting, read back by the report's reader, gives the same limit.
    for owner, line in owner_settings(2048).items():
        assert testing.OWNER_SETTING_RES[owner].search(line).group(1) == "2048"
