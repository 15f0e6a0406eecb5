"""``health``: the sampler's metrics read back per machine of a deployed stack (moto in-process).

The metrics reach moto's CloudWatch through :func:`e2e.statsd_agent.put_datagram`, the one simulated step
(the CloudWatch agent's StatsD input); the datagrams are the sampler's format, the stack and CloudWatch are
moto's.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdk_audit_backlog import cli, health
from cdk_audit_backlog.health import MAX_QUERIES, memory_bound, recommend
from cdk_audit_backlog.monitoring_metrics import GROUP_DIMENSION, INSTANCE_DIMENSION, NAMESPACE
from cdk_audit_backlog.policy import BacklogPolicy
from e2e.statsd_agent import datagram, metric_data, put_datagram

REGION = "us-east-1"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(autouse=True)
def _dummy_aws(dummy_aws):
    """Every test here talks to moto only."""


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def deploy(name="Fleet", instances=(("Web", "t3.micro"),), group_size=2):
    """A stack of Instances and one Auto Scaling group of m5.large; returns ({logical id: instance id},
    group name, [group member ids])."""
    ec2c = boto3.client("ec2", region_name=REGION)
    ami = ec2c.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    subnet = ec2c.describe_subnets()["Subnets"][0]["SubnetId"]
    resources = {
        lid: {"Type": "AWS::EC2::Instance",
              "Properties": {"ImageId": ami, "InstanceType": itype, "SubnetId": subnet}}
        for lid, itype in instances
    }
    if group_size:
        resources["Lt"] = {"Type": "AWS::EC2::LaunchTemplate",
                           "Properties": {"LaunchTemplateData": {"ImageId": ami, "InstanceType": "m5.large"}}}
        resources["Asg"] = {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {"MinSize": str(group_size), "MaxSize": str(group_size),
                           "VPCZoneIdentifier": [subnet],
                           "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Lt"},
                                              "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}},
        }
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName=name, TemplateBody=json.dumps({"Resources": resources}))
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
    group = physical.get("Asg")
    members = []
    if group:
        asg = boto3.client("autoscaling", region_name=REGION)
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        members = sorted(i["InstanceId"] for i in g["Instances"])
    return {lid: physical[lid] for lid, _ in instances}, group, members


def sample(instance_id, group=None, minutes_ago=5, owner=None, **values):
    cw = boto3.client("cloudwatch", region_name=REGION)
    put_datagram(cw, datagram(owner=owner, **values), instance_id, group,
                 NOW - dt.timedelta(minutes=minutes_ago))


def table_rows(out):
    lines = out.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells))
    return rows


# --------------------------------------------------------------------------- the agent's translation


def test_a_datagram_becomes_the_series_the_agent_puts():
    text = datagram(owner="auditbeat", AuditLostEvents=3, AuditBacklog=40, AuditBacklogLimit=8192)
    assert text.splitlines() == ["AuditLostEvents:3|c", "AuditBacklog:40|g", "AuditBacklogLimit:8192|g",
                                 "AuditSocketOwner:1|g|#Owner:auditbeat"]
    entries = metric_data(text, "i-1", "grp")
    owner = [e for e in entries if e["MetricName"] == "AuditSocketOwner"]
    dims = sorted(tuple(sorted((d["Name"], d["Value"]) for d in e["Dimensions"])) for e in owner)
    assert dims == sorted([
        (("AutoScalingGroupName", "grp"), ("InstanceId", "i-1"), ("Owner", "auditbeat")),
        (("InstanceId", "i-1"),),
        (("AutoScalingGroupName", "grp"),),
    ])
    lost = next(e for e in entries if e["MetricName"] == "AuditLostEvents")
    assert (lost["Value"], lost["Unit"]) == (3.0, "Count")
    # Outside a group the full series and the InstanceId roll-up are one series.
    assert len(metric_data("AuditBacklog:1|g\n", "i-1")) == 1
    with pytest.raises(ValueError, match="StatsD type"):
        metric_data("AuditBacklog:1|c\n", "i-1")


# ------------------------------------------------------------------------------------------ health


@mock_aws
def test_health_rows_owner_and_exit_1_on_lost_events(capsys):
    ids, group, members = deploy()
    web = ids["Web"]
    lossy, silent = members
    sample(web, AuditLostEvents=0, AuditBacklog=100, AuditBacklogLimit=1024, AuditBacklogUsePercent=9.8,
           AuditBacklogDrift=0, owner="auditd")
    sample(web, minutes_ago=4, AuditLostEvents=0, AuditBacklog=600, AuditBacklogLimit=1024,
           AuditBacklogUsePercent=58.6, AuditBacklogDrift=0, owner="auditd")
    # Two samples with losses: the Sum; the owner changed from auditbeat to osqueryd: the latest wins.
    sample(lossy, group, minutes_ago=20, AuditLostEvents=5, AuditBacklog=8192, AuditBacklogLimit=8192,
           AuditBacklogUsePercent=100, AuditBacklogDrift=0, owner="auditbeat")
    sample(lossy, group, minutes_ago=3, AuditLostEvents=3, AuditBacklog=4000, AuditBacklogLimit=4096,
           AuditBacklogUsePercent=97.7, AuditBacklogDrift=4096, owner="osqueryd")

    rc, out, err = run(["health", "--stack", "Fleet", "--region", REGION], capsys)
    assert rc == 1, out + err
    rows = table_rows(out)
    assert set(rows) == {web, lossy, silent}
    assert rows[web]["group"] == "-" and rows[web]["type"] == "t3.micro"
    assert (rows[web]["lost"], rows[web]["peak/limit"], rows[web]["use_%"], rows[web]["owner"],
            rows[web]["drift"]) == ("0", "600/1024", "58.6", "auditd", "0")
    # The limit is the contract's Minimum: the smallest limit in force over the window.
    assert (rows[lossy]["group"], rows[lossy]["lost"], rows[lossy]["peak/limit"], rows[lossy]["owner"],
            rows[lossy]["drift"]) == (group, "8", "8192/4096", "osqueryd", "4096")
    assert rows[silent]["lost"] == "no data"
    assert "1 machine(s) with no data: turn monitoring on" in err
    assert "3 machine(s) over 24 h, 1 lost events" in err

    rc, out, _ = run(["health", "--stack", "Fleet", "--region", REGION, "--format", "json"], capsys)
    assert rc == 1
    by_id = {r["instance_id"]: r for r in json.loads(out)}
    assert by_id[lossy]["lost"] == 8 and by_id[lossy]["lost_events"] and by_id[lossy]["group"] == group
    assert by_id[web]["owner"] == "auditd" and by_id[web]["memory_mib"] == 1024
    assert by_id[silent]["has_data"] is False and by_id[silent]["lost"] is None
    assert by_id[web]["recommendation"] is None and by_id[web]["hours"] == 24


@mock_aws
def test_health_exit_0_without_losses_and_the_window_bounds_the_data(capsys):
    ids, _, _ = deploy(group_size=0)
    web = ids["Web"]
    sample(web, AuditLostEvents=0, AuditBacklog=10, AuditBacklogLimit=1024)
    sample(web, minutes_ago=30 * 60, AuditLostEvents=50, AuditBacklog=1024, AuditBacklogLimit=1024)
    rc, out, err = run(["health", "--stack", "Fleet", "--region", REGION, "--format", "json"], capsys)
    assert rc == 0, out + err
    (row,) = json.loads(out)
    assert (row["lost"], row["peak_backlog"], row["use_percent"]) == (0, 10, pytest.approx(100 * 10 / 1024))
    rc, out, _ = run(["health", "--stack", "Fleet", "--region", REGION, "--hours", "48", "--format", "json"],
                     capsys)
    assert rc == 1 and json.loads(out)[0]["lost"] == 50


@mock_aws
def test_health_recommends_from_the_evidence(capsys):
    ids, group, members = deploy(instances=(("Web", "t3.micro"), ("Quiet", "r5.large")), group_size=1)
    sample(ids["Web"], AuditLostEvents=0, AuditBacklog=600, AuditBacklogLimit=1024)
    sample(ids["Quiet"], AuditLostEvents=0, AuditBacklog=12, AuditBacklogLimit=16384)
    sample(members[0], group, AuditLostEvents=7, AuditBacklog=8192, AuditBacklogLimit=8192)
    rc, out, err = run(["health", "--stack", "Fleet", "--region", REGION, "--recommend"], capsys)
    assert rc == 1, out + err
    text = out.split("recommendations (over the last 24 h):")[1]
    assert re.search(rf"{ids['Web']} \(t3.micro, 1024 MiB\): raise 1024 -> 2048: peak 600 is 59 % ", text)
    assert re.search(rf"{members[0]} \(m5.large, 8192 MiB\): raise 8192 -> 16384: 7 event\(s\) lost", text)
    assert re.search(rf"{ids['Quiet']} \(r5.large, 16384 MiB\): lower 16384 -> 8192: ", text), text
    m = re.search(r"set: AuditBacklog\(policy=BacklogPolicy\(memory_fraction=([0-9.]+)\)\) or "
                  r"AuditBacklog\(backlog_limit=16384\)", text)
    assert m and BacklogPolicy(memory_fraction=float(m.group(1))).limit_for_memory(8192) == 16384
    rc, out, _ = run(["health", "--stack", "Fleet", "--region", REGION, "--recommend", "--format", "json"],
                     capsys)
    rec = {r["instance_id"]: r["recommendation"] for r in json.loads(out)}
    assert rec[members[0]]["action"] == "raise" and rec[members[0]]["limit"] == 16384
    assert rec[members[0]]["bound"] == 32768 and not rec[members[0]]["bound_cut"]


@mock_aws
def test_health_errors_and_usage(capsys):
    rc, _, err = run(["health", "--stack", "NoSuchStack", "--region", REGION], capsys)
    assert rc == 2 and "NoSuchStack does not exist" in err
    for bad in ("0", "1513", "x"):
        with pytest.raises(SystemExit) as e:
            cli.main(["health", "--stack", "S", "--hours", bad])
        assert e.value.code == 2
    assert "from 1 to 1512" in capsys.readouterr().err


def test_get_metric_data_sends_at_most_500_queries_a_call():
    calls = []

    class FakeCloudWatch:
        def get_metric_data(self, **kw):
            calls.append(len(kw["MetricDataQueries"]))
            page = kw.get("NextToken")
            results = [{"Id": q["Id"], "Timestamps": [NOW], "Values": [1.0]}
                       for q in kw["MetricDataQueries"]]
            if page is None and len(calls) == 1:
                return {"MetricDataResults": results[:1], "NextToken": "more"}
            return {"MetricDataResults": results}

    queries = [{"Id": f"q{i}"} for i in range(1203)]
    got = health._get_metric_data(FakeCloudWatch(), queries, NOW - dt.timedelta(hours=1), NOW,
                                  descending=False)
    assert calls == [500, 500, 500, 203] and max(calls) <= MAX_QUERIES
    assert len(got) == 1203 and got["q0"] == [(NOW, 1.0), (NOW, 1.0)]  # its page and the next one


# ------------------------------------------------------------------------------------ recommendation


def is_pow2(n):
    return n > 0 and n & (n - 1) == 0


def test_memory_bound_is_5_percent_of_memory_in_buffers():
    assert memory_bound(1024, BacklogPolicy()) == 4096  # 53.7 MB / 8970 = 5985
    assert memory_bound(8192, BacklogPolicy()) == 32768
    assert memory_bound(1 << 20, BacklogPolicy()) == 262144  # the policy's maximum
    assert memory_bound(1 << 20, BacklogPolicy(maximum=100000)) == 65536


def test_the_memory_bound_cuts_and_says_so():
    r = recommend(limit=2048, peak=2048, lost=100, memory_mib=1024, hours=24)
    assert (r.action, r.limit, r.bound, r.bound_cut) == ("raise", 4096, 4096, False)
    r = recommend(limit=3000, peak=3000, lost=1, memory_mib=1024, hours=24)
    assert (r.action, r.limit, r.bound, r.bound_cut) == ("raise", 4096, 4096, True)
    assert "the memory bound cuts 8192 to 4096" in r.reason
    r = recommend(limit=4096, peak=4096, lost=1, memory_mib=1024, hours=24)
    assert (r.action, r.limit, r.bound_cut) == ("keep", None, True)
    assert "make the reader (auditd) keep up" in r.reason


def test_lower_keeps_the_compliance_floor_and_needs_a_day():
    r = recommend(limit=32768, peak=10, lost=0, memory_mib=65536, hours=24)
    assert (r.action, r.limit) == ("lower", 8192)  # the limit is >= 8192: never below the floor
    r = recommend(limit=4096, peak=10, lost=0, memory_mib=65536, hours=24)
    assert (r.action, r.limit) == ("lower", 512)  # 4 x 10 -> 64, held at the policy minimum 320 -> 512
    assert recommend(limit=32768, peak=10, lost=0, memory_mib=65536, hours=23).action == "keep"
    assert recommend(limit=None, peak=None, lost=None, memory_mib=1024, hours=24).action == "none"
    assert recommend(limit=0, peak=5, lost=0, memory_mib=1024, hours=24).action == "none"
    assert recommend(limit=1024, peak=5, lost=0, memory_mib=None, hours=24).action == "none"


policies = st.builds(
    lambda fraction, lo, span: BacklogPolicy(memory_fraction=fraction, minimum=lo, maximum=lo + span),
    st.sampled_from([0.01, 0.02, 0.05, 0.001]),
    st.integers(1, 65536),
    st.integers(0, 2**24),
)


@settings(max_examples=400, deadline=None)
@given(
    limit=st.integers(1, 2**31 - 1),
    peak_share=st.floats(0, 1.2),
    lost=st.integers(0, 10**6),
    memory_mib=st.integers(0, 2**24),
    hours=st.integers(1, 1512),
    policy=policies,
)
def test_recommendation_bounds(limit, peak_share, lost, memory_mib, hours, policy):
    peak = int(limit * peak_share)
    r = recommend(limit=limit, peak=peak, lost=lost, memory_mib=memory_mib, hours=hours, policy=policy)
    assert r.action in ("raise", "lower", "keep")
    if r.limit is None:
        assert r.action == "keep" and not r.setting
        return
    assert is_pow2(r.limit)
    assert r.limit >= policy.minimum
    assert r.limit <= r.bound == memory_bound(memory_mib, policy)
    if r.action == "raise":
        assert r.limit > limit
        if lost:
            assert r.limit >= peak or (r.bound_cut and r.limit == r.bound)
    else:
        assert r.action == "lower" and r.limit < limit and not lost
        if limit >= 8192:
            assert r.limit >= 8192
    fraction = re.search(r"memory_fraction=([0-9.]+)", r.setting)
    if fraction:
        got = BacklogPolicy(memory_fraction=float(fraction.group(1)), minimum=policy.minimum,
                            maximum=policy.maximum).limit_for_memory(memory_mib)
        assert got == r.limit
    assert f"backlog_limit={r.limit})" in r.setting


def test_namespace_and_dimensions_come_from_the_contract():
    entries = metric_data(datagram(AuditBacklog=1), "i-9", "g")
    assert {d["Name"] for e in entries for d in e["Dimensions"]} == {INSTANCE_DIMENSION, GROUP_DIMENSION}
    assert NAMESPACE == "CdkAuditBacklog"
