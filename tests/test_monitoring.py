"""AuditBacklogMonitoring and AuditBacklog(monitoring=...): the CDK half of live health.

Template assertions joined against the metric contract (monitoring_metrics), the options' validation (with
hypothesis), apply_to on one and several stacks, the plain aspect, cfn-lint. What the CloudWatch agent does
with the StatsD datagrams is AWS's code: these tests check what we give it (its configuration) and what we
read back (the alarms' metric names, statistics and dimensions), never the translation itself.
"""

from __future__ import annotations

import json
import os
import subprocess

import aws_cdk as cdk
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Annotations, Match, Template
from hypothesis import given, settings
from hypothesis import strategies as st

from cdk_audit_backlog import AuditBacklog, AuditBacklogMonitoring, MonitoringOptions
from cdk_audit_backlog import monitoring_metrics as mm
from cdk_audit_backlog.monitoring import (
    AGENT_PACKAGE,
    CONFIGURE_PACKAGE_DOCUMENT,
    KERNEL_LOG_METRIC,
    MANAGE_AGENT_DOCUMENT,
    MONITORING_ID,
    NO_ROLE_WARNING,
    PARAMETER_PREFIX,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = cdk.Environment(account="123456789012", region="us-east-1")


def _launches(stack, *, template_role=False):
    """An Instance, a group from a launch configuration, a group from a launch template."""
    vpc = ec2.Vpc(
        stack, "Vpc", max_azs=1, nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)],
    )
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
    web = ec2.Instance(stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    legacy = autoscaling.AutoScalingGroup(
        stack, "Legacy", vpc=vpc, instance_type=ec2.InstanceType("t3.small"), machine_image=image
    )
    role = None
    if template_role:
        role = iam.Role(stack, "WorkerRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    lt = ec2.LaunchTemplate(
        stack, "WorkerTemplate", instance_type=ec2.InstanceType("m5.large"), machine_image=image, role=role
    )
    workers = autoscaling.AutoScalingGroup(stack, "Workers", vpc=vpc, launch_template=lt)
    return web, legacy, lt, workers


def _of_type(template: dict, kind: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _logical_id(stack, construct) -> str:
    return stack.get_logical_id(construct.node.default_child)


def _alarms(template: dict) -> list:
    """(metric name, statistic, {dimension: value}, threshold, alarm) of every metric alarm."""
    out = []
    for alarm in _of_type(template, "AWS::CloudWatch::Alarm").values():
        p = alarm["Properties"]
        if "Metrics" in p:
            (m,) = p["Metrics"]
            stat = m["MetricStat"]
            metric = stat["Metric"]
            dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            out.append((metric["MetricName"], stat["Stat"], dims, p["Threshold"], p, metric["Namespace"]))
        else:
            dims = {d["Name"]: d["Value"] for d in p.get("Dimensions", [])}
            out.append((p["MetricName"], p["Statistic"], dims, p["Threshold"], p, p["Namespace"]))
    return out


# -- apply_to with every option on: one synthesis, read by several tests ---------------------------------


@pytest.fixture(scope="module")
def full():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    web, legacy, lt, workers = _launches(stack, template_role=True)
    options = MonitoringOptions(
        interval=30, lost_events_threshold=5, alarm_period=cdk.Duration.minutes(10), backlog_use_percent=75,
        alarm_topic=True, install_agent=True, grant_permissions=True, kernel_log_group_name="/fleet/kern",
    )
    AuditBacklog.apply_to(app, association=True, monitoring=options)
    template = Template.from_stack(stack)
    ids = {name: _logical_id(stack, c) for name, c in
           (("web", web), ("legacy", legacy), ("workers", workers))}
    ids["legacy_role"] = stack.get_logical_id(legacy.role.node.default_child)
    ids["web_role"] = stack.get_logical_id(web.role.node.default_child)
    ids["worker_role"] = stack.get_logical_id(lt.role.node.default_child)
    return template, template.to_json(), ids, stack


def test_the_agent_configuration_is_our_statsd_input_only(full):
    _, t, _, _ = full
    (param,) = _of_type(t, "AWS::SSM::Parameter").values()
    p = param["Properties"]
    assert p["Type"] == "String"
    assert p["Name"]["Fn::Join"][1][:2] == [PARAMETER_PREFIX, {"Ref": "AWS::StackName"}]
    assert p["Name"]["Fn::Join"][1][0].startswith("AmazonCloudWatch-")
    config = json.loads(p["Value"])
    assert list(config) == ["metrics"]
    metrics = config["metrics"]
    assert set(metrics) == {"namespace", "append_dimensions", "aggregation_dimensions", "metrics_collected"}
    assert metrics["namespace"] == mm.NAMESPACE
    assert metrics["append_dimensions"] == {
        mm.INSTANCE_DIMENSION: "${aws:InstanceId}",
        mm.GROUP_DIMENSION: "${aws:AutoScalingGroupName}",
    }
    assert metrics["aggregation_dimensions"] == [[mm.INSTANCE_DIMENSION], [mm.GROUP_DIMENSION]]
    assert list(metrics["metrics_collected"]) == ["statsd"]
    statsd = metrics["metrics_collected"]["statsd"]
    assert statsd == {
        "service_address": ":" + mm.STATSD_ADDRESS.rsplit(":", 1)[1],
        "metrics_collection_interval": 10,
        "metrics_aggregation_interval": 60,
    }
    assert statsd["service_address"] == ":8125"


def test_the_manage_agent_association_appends_the_parameter_on_the_stack_machines(full):
    _, t, _, _ = full
    assocs = {json.dumps(a["Properties"]["Name"]).strip('"'): (k, a)
              for k, a in _of_type(t, "AWS::SSM::Association").items()}
    (param_id,) = _of_type(t, "AWS::SSM::Parameter")
    key, manage = assocs[MANAGE_AGENT_DOCUMENT]
    assert manage["Properties"]["Parameters"] == {
        "action": ["configure (append)"],
        "mode": ["ec2"],
        "optionalConfigurationSource": ["ssm"],
        "optionalConfigurationLocation": [{"Ref": param_id}],
        "optionalRestart": ["yes"],
    }
    stack_tag = [{"Key": "tag:aws:cloudformation:stack-name", "Values": [{"Ref": "AWS::StackName"}]}]
    assert manage["Properties"]["Targets"] == stack_tag
    install_id, install = assocs[CONFIGURE_PACKAGE_DOCUMENT]
    assert install["Properties"]["Parameters"] == {"action": ["Install"], "name": [AGENT_PACKAGE]}
    assert install["Properties"]["Targets"] == stack_tag
    assert install_id in manage["DependsOn"]  # installed before it is configured


def test_the_tuning_association_gets_the_monitor_interval(full):
    _, t, _, _ = full
    (doc,) = _of_type(t, "AWS::SSM::Document").values()
    (step,) = doc["Properties"]["Content"]["mainSteps"]
    assert "CAB_MONITOR=30" in step["inputs"]["runCommand"]


def test_every_tuned_launch_renders_the_monitor_interval(full):
    _, t, _, _ = full
    datas = [json.dumps(r["Properties"].get("UserData") or r["Properties"].get("LaunchTemplateData"))
             for r in t["Resources"].values()
             if r["Type"] in ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate",
                              "AWS::AutoScaling::LaunchConfiguration")]
    assert len(datas) == 3
    assert all("CAB_MONITOR=30" in d for d in datas)


def test_alarms_per_group_and_instance_read_the_contract(full):
    _, t, ids, _ = full
    (topic_id,) = _of_type(t, "AWS::SNS::Topic")
    per_target = [a for a in _alarms(t) if a[2]]
    got = sorted((a[0], a[1], json.dumps(a[2], sort_keys=True), a[3]) for a in per_target)
    expected = []
    for dim, target in ((mm.INSTANCE_DIMENSION, ids["web"]), (mm.GROUP_DIMENSION, ids["legacy"]),
                        (mm.GROUP_DIMENSION, ids["workers"])):
        dims = json.dumps({dim: {"Ref": target}}, sort_keys=True)
        expected.append(("AuditLostEvents", mm.BY_NAME["AuditLostEvents"].statistic, dims, 5))
        expected.append(("AuditBacklogUsePercent", mm.BY_NAME["AuditBacklogUsePercent"].statistic, dims, 75))
    assert got == sorted(expected)
    for name, _, _, _, p, namespace in per_target:
        assert name in mm.BY_NAME and namespace == mm.NAMESPACE
        assert p["ComparisonOperator"] == "GreaterThanThreshold"
        assert p["TreatMissingData"] == "notBreaching"
        assert p["EvaluationPeriods"] == 1
        assert p["Metrics"][0]["MetricStat"]["Period"] == 600
        assert p["AlarmActions"] == [{"Ref": topic_id}] and p["OKActions"] == [{"Ref": topic_id}]


def test_the_policy_is_scoped_to_the_namespace_and_the_parameter_and_on_every_role(full):
    _, t, ids, _ = full
    (param_id,) = _of_type(t, "AWS::SSM::Parameter")
    (policy,) = _of_type(t, "AWS::IAM::ManagedPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action = {s["Action"]: s for s in statements}
    assert set(by_action) == {"cloudwatch:PutMetricData", "ssm:GetParameter", "ec2:DescribeTags"}
    assert all(s["Effect"] == "Allow" for s in statements)
    assert by_action["cloudwatch:PutMetricData"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": mm.NAMESPACE}
    }
    arn = json.dumps(by_action["ssm:GetParameter"]["Resource"])
    assert ":parameter/" in arn and json.dumps({"Ref": param_id}) in arn and "*" not in arn
    roles = sorted(r["Ref"] for r in policy["Properties"]["Roles"])
    assert roles == sorted([ids["web_role"], ids["legacy_role"], ids["worker_role"]])


def test_the_dashboard_shows_the_contract_metrics_per_target(full):
    _, t, ids, stack = full
    (dash,) = _of_type(t, "AWS::CloudWatch::Dashboard").values()
    body = json.loads("".join(
        part if isinstance(part, str) else "REF:" + part.get("Ref", "")
        for part in dash["Properties"]["DashboardBody"]["Fn::Join"][1]
    ))
    lines = [m for w in body["widgets"] for m in w["properties"].get("metrics", [])]
    names = {m[1] for m in lines if m[0] == mm.NAMESPACE}
    assert {"AuditLostEvents", "AuditBacklogUsePercent", "AuditBacklog", "AuditBacklogLimit",
            "AuditBacklogDrift", KERNEL_LOG_METRIC} <= names
    drift = [m for m in lines if m[1] == "AuditBacklogDrift"]
    assert sorted(m[3] for m in drift) == sorted("REF:" + ids[k] for k in ("web", "legacy", "workers"))
    assert {m[2] for m in drift} == {mm.INSTANCE_DIMENSION, mm.GROUP_DIMENSION}


def test_the_kernel_log_filter_counts_audit_lost_lines_and_alarms(full):
    _, t, _, _ = full
    (mf,) = _of_type(t, "AWS::Logs::MetricFilter").values()
    p = mf["Properties"]
    assert p["LogGroupName"] == "/fleet/kern"
    assert p["FilterPattern"] == '"audit_lost="'
    assert p["MetricTransformations"] == [{
        "MetricName": KERNEL_LOG_METRIC, "MetricNamespace": mm.NAMESPACE, "MetricValue": "1",
        "DefaultValue": 0, "Unit": "Count",
    }]
    assert KERNEL_LOG_METRIC not in mm.BY_NAME  # lines, not the sampler's events
    (alarm,) = [a for a in _alarms(t) if a[0] == KERNEL_LOG_METRIC]
    assert alarm[1] == "Sum" and alarm[3] == 5 and alarm[4]["Period"] == 600


def test_the_full_template_is_cfn_lint_clean(full, tmp_path):
    _, t, _, _ = full
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(t))
    result = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "cfn-lint"), str(path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode & 2 == 0, result.stdout + result.stderr


# -- defaults, opt-ins off -------------------------------------------------------------------------------


def test_defaults_add_no_iam_no_install_no_actions_no_filter():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    _launches(stack)
    AuditBacklog.apply_to(app, monitoring=True)
    t = Template.from_stack(stack).to_json()
    assert not _of_type(t, "AWS::IAM::ManagedPolicy")
    assert not _of_type(t, "AWS::SNS::Topic")
    assert not _of_type(t, "AWS::Logs::MetricFilter")
    assert [a["Properties"]["Name"] for a in _of_type(t, "AWS::SSM::Association").values()] == [
        MANAGE_AGENT_DOCUMENT
    ]
    assert len(_of_type(t, "AWS::CloudWatch::Dashboard")) == 1
    alarms = _alarms(t)
    assert len(alarms) == 6
    assert all("AlarmActions" not in a[4] for a in alarms)
    assert {(a[0], a[3]) for a in alarms} == {("AuditLostEvents", 0), ("AuditBacklogUsePercent", 80)}
    assert all(a[4]["Metrics"][0]["MetricStat"]["Period"] == 300 for a in alarms)
    # no policy from us, and no role got anything on our account
    for policy in _of_type(t, "AWS::IAM::Policy").values():
        assert "cloudwatch:PutMetricData" not in json.dumps(policy)
    block = json.dumps(t)
    assert f"CAB_MONITOR={mm.DEFAULT_INTERVAL_S}" in block


def test_without_monitoring_nothing_is_added_and_no_sampler():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    _launches(stack)
    AuditBacklog.apply_to(app)
    t = Template.from_stack(stack).to_json()
    kinds = {r["Type"] for r in t["Resources"].values()}
    assert not kinds & {"AWS::CloudWatch::Alarm", "AWS::SSM::Parameter", "AWS::CloudWatch::Dashboard"}
    assert "CAB_MONITOR" not in json.dumps(t)


def test_an_existing_topic_gets_the_actions_and_no_dashboard_when_off():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    _launches(stack)
    topic = sns.Topic.from_topic_arn(stack, "Ops", "arn:aws:sns:us-east-1:123456789012:ops")
    AuditBacklog.apply_to(app, monitoring=MonitoringOptions(alarm_topic=topic, dashboard=False))
    t = Template.from_stack(stack).to_json()
    assert not _of_type(t, "AWS::SNS::Topic") and not _of_type(t, "AWS::CloudWatch::Dashboard")
    alarms = _alarms(t)
    assert alarms and all(a[4]["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:ops"] for a in alarms)


def test_a_launch_without_a_role_is_named_in_a_warning():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    _launches(stack)  # the launch template has no role
    AuditBacklog.apply_to(app, monitoring=MonitoringOptions(grant_permissions=True))
    Annotations.from_stack(stack).has_warning(
        "/Fleet/WorkerTemplate/Resource",
        Match.string_like_regexp(f"no CloudWatch agent policy.*{NO_ROLE_WARNING}"),
    )
    (policy,) = _of_type(Template.from_stack(stack).to_json(), "AWS::IAM::ManagedPolicy").values()
    assert len(policy["Properties"]["Roles"]) == 2  # the Instance's and the launch configuration group's


# -- which stacks and launches get it ----------------------------------------------------------------------


def test_apply_to_adds_one_per_stack_with_launches_and_none_elsewhere():
    app = cdk.App()
    a = cdk.Stack(app, "A", env=ENV)
    b = cdk.Stack(app, "B", env=ENV)
    empty = cdk.Stack(app, "Empty", env=ENV)
    sns.Topic(empty, "Something")
    _launches(a)
    _launches(b)
    AuditBacklog.apply_to(app, association=True, monitoring=True)
    AuditBacklog.apply_to(app, association=True, monitoring=True)  # again: nothing twice
    app.synth()
    for stack in (a, b):
        found = [c for c in stack.node.find_all() if isinstance(c, AuditBacklogMonitoring)]
        assert len(found) == 1 and found[0].node.id == MONITORING_ID
        t = Template.from_stack(stack).to_json()
        assert len(_of_type(t, "AWS::SSM::Parameter")) == 1
        assert len(_alarms(t)) == 6
    assert not [c for c in empty.node.find_all() if isinstance(c, AuditBacklogMonitoring)]
    assert not _of_type(Template.from_stack(empty).to_json(), "AWS::CloudWatch::Alarm")
    names = {json.dumps(Template.from_stack(s).to_json()["Resources"]) for s in (a, b)}
    assert len(names) == 2


def test_a_skipped_launch_gets_no_alarm_and_a_stack_of_skipped_launches_no_monitoring():
    app = cdk.App()
    a = cdk.Stack(app, "A", env=ENV)
    skipped = cdk.Stack(app, "Skipped", env=ENV)
    web, legacy, _, workers = _launches(a)
    _launches(skipped)
    AuditBacklog.skip(web, "tuned by hand")
    AuditBacklog.skip(skipped, "not ours")
    AuditBacklog.apply_to(app, monitoring=True)
    t = Template.from_stack(a).to_json()
    dims = [json.dumps(x[2]) for x in _alarms(t)]
    assert not any(_logical_id(a, web) in d for d in dims)
    assert any(_logical_id(a, legacy) in d for d in dims) and any(_logical_id(a, workers) in d for d in dims)
    assert not _of_type(Template.from_stack(skipped).to_json(), "AWS::SSM::Parameter")


def test_the_plain_aspect_monitors_too():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet", env=ENV)
    web, legacy, _, workers = _launches(stack)
    cdk.Aspects.of(app).add(AuditBacklog(monitoring=MonitoringOptions(interval=120)))
    t = Template.from_stack(stack).to_json()
    assert len(_of_type(t, "AWS::SSM::Parameter")) == 1
    dims = sorted(json.dumps(x[2]) for x in _alarms(t) if x[0] == "AuditLostEvents")
    assert dims == sorted(json.dumps({d: {"Ref": _logical_id(stack, c)}}) for d, c in (
        (mm.INSTANCE_DIMENSION, web), (mm.GROUP_DIMENSION, legacy), (mm.GROUP_DIMENSION, workers)))
    assert "CAB_MONITOR=120" in json.dumps(t)


def test_standalone_with_given_machines():
    app = cdk.App()
    stack = cdk.Stack(app, "Pieces", env=ENV)
    web, legacy, lt, workers = _launches(stack, template_role=True)
    mon = AuditBacklogMonitoring(
        stack, "Health", instances=[web], groups=[legacy, workers.node.default_child],
        grant_permissions=True, namespace="Team/Audit",
    )
    mon.grant(lt)
    t = Template.from_stack(stack).to_json()
    assert {(a[0], a[5]) for a in _alarms(t)} == {("AuditLostEvents", "Team/Audit"),
                                                   ("AuditBacklogUsePercent", "Team/Audit")}
    assert len(_alarms(t)) == 6
    (policy,) = _of_type(t, "AWS::IAM::ManagedPolicy").values()
    assert len(policy["Properties"]["Roles"]) == 3
    assert "CAB_MONITOR" not in json.dumps(t)  # no aspect: the sampler comes from elsewhere
    with pytest.raises(ValueError, match="instances must be"):
        AuditBacklogMonitoring(stack, "Bad", instances=[lt])
    with pytest.raises(ValueError, match="groups must be"):
        AuditBacklogMonitoring(stack, "Bad2", groups=[web])


# -- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"interval": 9}, "interval"),
        ({"interval": 3601}, "interval"),
        ({"interval": True}, "interval"),
        ({"interval": "60"}, "interval"),
        ({"namespace": "AWS/EC2"}, "namespace"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a" * 256}, "namespace"),
        ({"namespace": "bad\nname"}, "namespace"),
        ({"lost_events_threshold": -1}, "lost_events_threshold"),
        ({"lost_events_threshold": 1.5}, "lost_events_threshold"),
        ({"alarm_period": 300}, "alarm_period"),
        ({"alarm_period": cdk.Duration.seconds(90)}, "alarm_period"),
        ({"alarm_period": cdk.Duration.seconds(30)}, "alarm_period"),
        ({"alarm_period": cdk.Duration.days(2)}, "alarm_period"),
        ({"backlog_use_percent": 0}, "backlog_use_percent"),
        ({"backlog_use_percent": 100}, "backlog_use_percent"),
        ({"backlog_use_percent": True}, "backlog_use_percent"),
        ({"alarm_topic": "arn:aws:sns:us-east-1:123456789012:x"}, "alarm_topic"),
        ({"alarm_topic": False}, "alarm_topic"),
        ({"dashboard": 1}, "dashboard"),
        ({"install_agent": "yes"}, "install_agent"),
        ({"grant_permissions": None}, "grant_permissions"),
        ({"kernel_log_group_name": ""}, "kernel_log_group_name"),
        ({"kernel_log_group_name": "bad name"}, "kernel_log_group_name"),
    ],
)
def test_each_option_is_validated_by_name(kwargs, option):
    with pytest.raises(ValueError, match=f"^{option} must"):
        MonitoringOptions(**kwargs)
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    with pytest.raises(ValueError, match=f"^{option} must"):
        AuditBacklogMonitoring(stack, "M", **kwargs)
    assert stack.node.try_find_child("M") is None  # nothing half-built


@pytest.mark.parametrize("value", [1, "yes", {"interval": 60}, AuditBacklog])
def test_a_wrong_monitoring_value_names_monitoring(value):
    with pytest.raises(ValueError, match="^monitoring must be None, True or a MonitoringOptions"):
        AuditBacklog(monitoring=value)
    with pytest.raises(ValueError, match="^monitoring must"):
        AuditBacklog.apply_to(cdk.App(), monitoring=value)


def test_monitoring_sets_the_aspect_monitor_interval():
    assert AuditBacklog().options.monitor_interval is None
    assert AuditBacklog(monitoring=False).options.monitor_interval is None
    assert AuditBacklog(monitoring=True).options.monitor_interval == mm.DEFAULT_INTERVAL_S
    assert AuditBacklog(monitoring=MonitoringOptions(interval=15)).options.monitor_interval == 15


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_interval_accepts_exactly_the_contract_range(n):
    if mm.MIN_INTERVAL_S <= n <= mm.MAX_INTERVAL_S:
        assert MonitoringOptions(interval=n).interval == n
    else:
        with pytest.raises(ValueError, match="^interval must"):
            MonitoringOptions(interval=n)


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-1000, max_value=1000))
def test_backlog_use_percent_is_above_0_and_below_100(x):
    if 0 < x < 100:
        assert MonitoringOptions(backlog_use_percent=x).backlog_use_percent == x
    else:
        with pytest.raises(ValueError, match="^backlog_use_percent must"):
            MonitoringOptions(backlog_use_percent=x)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=2 * 86400))
def test_alarm_period_is_whole_minutes_up_to_a_day(seconds):
    if seconds % 60 == 0 and seconds <= 86400:
        options = MonitoringOptions(alarm_period=cdk.Duration.seconds(seconds))
        assert options.alarm_period.to_seconds() == seconds
    else:
        with pytest.raises(ValueError, match="^alarm_period must"):
            MonitoringOptions(alarm_period=cdk.Duration.seconds(seconds))


# -- the one step simulated: the agent's translation of StatsD into CloudWatch metrics ---------------------


def _simulated_agent(config: dict, lines: list, host: dict) -> dict:
    """What the agent publishes for one aggregation interval, as its configuration says: counters (``c``)
    summed, gauges (``g``) the last value; ``append_dimensions`` resolved from ``host`` and added, then one
    series per ``aggregation_dimensions`` entry. Returns {(namespace, name, ((dim, value),)): value}."""
    metrics = config["metrics"]
    values: dict = {}
    for line in lines:
        name_value, kind = line.split("|")[:2]
        name, value = name_value.split(":")
        values[name] = values.get(name, 0) + float(value) if kind == "c" else float(value)
    appended = {dim: host[src[len("${aws:"):-1]] for dim, src in metrics["append_dimensions"].items()
                if src[len("${aws:"):-1] in host}
    out = {}
    for dims in metrics["aggregation_dimensions"]:
        if all(d in appended for d in dims):
            key_dims = tuple((d, appended[d]) for d in dims)
            for name, value in values.items():
                out[(metrics["namespace"], name, key_dims)] = value
    return out


def test_a_lost_event_in_a_statsd_datagram_reaches_the_groups_alarm_through_the_simulated_agent(full):
    _, t, ids, _ = full
    (param,) = _of_type(t, "AWS::SSM::Parameter").values()
    config = json.loads(param["Properties"]["Value"])
    # one machine of the Workers group, two samples in the minute: 4 then 3 events lost, the backlog 90 % full
    lines = [f"AuditLostEvents:4|{mm.BY_NAME['AuditLostEvents'].statsd_type}",
             f"AuditLostEvents:3|{mm.BY_NAME['AuditLostEvents'].statsd_type}",
             f"AuditBacklogUsePercent:90|{mm.BY_NAME['AuditBacklogUsePercent'].statsd_type}"]
    group_ref = {"Ref": ids["workers"]}
    published = _simulated_agent(config, lines, {"InstanceId": "i-0abc", "AutoScalingGroupName": "GROUP"})
    fired = []
    for name, stat, dims, threshold, _, namespace in _alarms(t):
        if dims != {mm.GROUP_DIMENSION: group_ref}:
            continue
        value = published[(namespace, name, ((mm.GROUP_DIMENSION, "GROUP"),))]
        assert stat in ("Sum", "Maximum")  # one datapoint: both are the value
        if value > threshold:
            fired.append(name)
    assert sorted(fired) == ["AuditBacklogUsePercent", "AuditLostEvents"]  # 7 > 5, 90 > 75
    assert ("CdkAuditBacklog", "AuditLostEvents", (("InstanceId", "i-0abc"),)) in published


def test_the_documented_metric_table_is_the_contract():
    with open(os.path.join(REPO, "docs", "monitoring.md"), encoding="utf-8") as f:
        text = f.read()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `Audit")]
    table = [tuple(cell.strip().strip("`") for cell in row[:4]) for row in rows]
    assert table == [(m.name, m.statsd_type, m.unit, m.statistic) for m in mm.METRICS]
