"""``AuditBacklogMonitoring``: the CDK half of live health (the sampler's metrics in CloudWatch, alarms).

With ``TuningOptions.monitor_interval`` set, every tuned machine runs the sampler
(``userdata/audit-backlog.sh``, mode ``sample``, on a systemd timer) that sends one StatsD datagram per
interval to the CloudWatch agent's listener on the machine (:data:`.monitoring_metrics.STATSD_ADDRESS`). This
construct adds, to one stack:

- an SSM ``String`` parameter ``AmazonCloudWatch-cdk-audit-backlog-<stack name>-<id hash>`` holding the agent
  configuration for that input only (:func:`agent_config`: the StatsD listener, the namespace, the
  ``InstanceId`` / ``AutoScalingGroupName`` dimensions). The ``AmazonCloudWatch-`` prefix is the one AWS's
  ``CloudWatchAgentServerPolicy`` lets the agent read;
- an ``AWS::SSM::Association`` running the AWS document ``AmazonCloudWatch-ManageAgent`` on the stack's
  machines (``tag:aws:cloudformation:stack-name``) with ``configure (append)``: the agent merges our input
  into whatever configuration it has, and restarts;
- optionally (``install_agent=True``) an association running ``AWS-ConfigureAWSPackage`` (install
  ``AmazonCloudWatchAgent``) first;
- optionally (``grant_permissions=True``) one managed policy on the roles of the stack's tuned launches:
  ``cloudwatch:PutMetricData`` only into the namespace, ``ssm:GetParameter`` on that one parameter, and
  ``ec2:DescribeTags`` (how the agent learns the ``AutoScalingGroupName`` it appends); a launch whose role the
  construct cannot see gets the warning :data:`NO_ROLE_WARNING`;
- per Auto Scaling group and per Instance, an alarm on lost events and one on backlog use
  (``TreatMissingData: notBreaching``: a machine without the agent is not an alarm), with actions to an SNS
  topic when one is given;
- a dashboard (lost events, backlog use, backlog against limit, drift), and, for fleets that ship kernel logs
  to CloudWatch Logs without the sampler, a metric filter counting the kernel's ``audit_lost=`` lines.

Every metric name, statistic and dimension comes from :mod:`.monitoring_metrics`, the one module the shell's
sampler is checked against.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from aws_cdk import Annotations, Aws, CfnResource, Duration, Fn, Stack, Token
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_ssm as ssm
from constructs import Construct, IConstruct

from .association import AssociationTarget, _role_of
from .monitoring_metrics import (
    BY_NAME,
    DEFAULT_INTERVAL_S,
    GROUP_DIMENSION,
    INSTANCE_DIMENSION,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    NAMESPACE,
    STATSD_ADDRESS,
    Metric,
)
from .policy import _require_int
from .tuning_options import validate_flag

__all__ = [
    "AuditBacklogMonitoring",
    "MonitoringOptions",
    "agent_config",
    "monitoring_options",
    "MONITORING_ID",
    "PARAMETER_PREFIX",
    "MANAGE_AGENT_DOCUMENT",
    "CONFIGURE_PACKAGE_DOCUMENT",
    "AGENT_PACKAGE",
    "KERNEL_LOG_METRIC",
    "KERNEL_LOG_PATTERN",
    "NO_ROLE_WARNING",
]

#: Construct id of the monitoring ``AuditBacklog(monitoring=...)`` adds to each stack with tuned launches.
MONITORING_ID = "AuditBacklogMonitoring"
#: The agent configuration parameter's name starts with this (``AmazonCloudWatch-*`` is what AWS's
#: ``CloudWatchAgentServerPolicy`` lets an agent read).
PARAMETER_PREFIX = "AmazonCloudWatch-cdk-audit-backlog-"
MANAGE_AGENT_DOCUMENT = "AmazonCloudWatch-ManageAgent"
#: The ``action`` the association gives ``AmazonCloudWatch-ManageAgent``: merge our input into the agent's
#: configuration, keep the rest.
MANAGE_AGENT_ACTION = "configure (append)"
CONFIGURE_PACKAGE_DOCUMENT = "AWS-ConfigureAWSPackage"
AGENT_PACKAGE = "AmazonCloudWatchAgent"
#: The metric the kernel-log filter publishes: one per kernel line reporting lost events (the kernel rate
#: limits those lines, so this counts lines, not events; it is not one of the sampler's metrics).
KERNEL_LOG_METRIC = "AuditLostMessages"
#: The kernel prints ``audit: audit_lost=N audit_rate_limit=R audit_backlog_limit=B`` when it loses events.
KERNEL_LOG_PATTERN = "audit_lost="
#: Warning id where ``grant_permissions=True`` finds a launch without a role it can attach the policy to.
NO_ROLE_WARNING = "cdk-audit-backlog:monitoring.no-role"

#: The agent aggregates the StatsD input over this many seconds before it publishes (one datapoint a minute).
AGENT_AGGREGATION_S = 60
#: How often the agent flushes what its StatsD listener received.
AGENT_COLLECTION_S = 10

# CloudWatch namespaces: 1..255 of these characters, not starting with "AWS/" (reserved for AWS services).
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9.\-_/#: ]{1,255}$")
# CloudWatch Logs log group names.
_LOG_GROUP_RE = re.compile(r"^[.\-_/#A-Za-z0-9]{1,512}$")
_MAX_ALARM_PERIOD_S = 86400
_DIMENSION_OF = {
    "AWS::EC2::Instance": INSTANCE_DIMENSION,
    "AWS::AutoScaling::AutoScalingGroup": GROUP_DIMENSION,
}


def _literal(value: Any) -> bool:
    return isinstance(value, str) and not Token.is_unresolved(value)


def _is_topic(value: Any) -> bool:
    # jsii interfaces are Protocols that isinstance() cannot check: an SNS topic is a construct with an ARN.
    return isinstance(value, Construct) and hasattr(type(value), "topic_arn")


@dataclass(frozen=True)
class MonitoringOptions:
    """What :class:`AuditBacklogMonitoring` deploys; ``AuditBacklog(monitoring=MonitoringOptions(...))`` takes
    the same (``monitoring=True`` takes these defaults). Keyword-only; validated here, a ``ValueError`` names
    the option.

    :param interval: seconds between two samples on each machine (one ``auditctl -s`` and one StatsD datagram
        each), 10..3600. Given to the aspect's ``monitor_interval``. Default: 60.
    :param namespace: the CloudWatch namespace the agent publishes into (1..255 characters, not ``AWS/...``).
        Default: ``CdkAuditBacklog``.
    :param lost_events_threshold: alarm when the Sum of ``AuditLostEvents`` over ``alarm_period`` exceeds it,
        an integer >= 0. Default: 0 (any lost event).
    :param alarm_period: the alarms' period, a ``Duration`` of whole minutes, 1 minute..1 day (the agent
        publishes one datapoint a minute). Default: 5 minutes.
    :param backlog_use_percent: alarm when the Maximum of ``AuditBacklogUsePercent`` over ``alarm_period``
        exceeds it, a number above 0 and below 100. Default: 80.
    :param alarm_topic: where the alarms send their ALARM and OK notifications: an ``sns.ITopic``, or True
        to create a topic in the stack. Default: None (alarms with no actions).
    :param dashboard: a CloudWatch dashboard of the stack's machines. Default: True.
    :param install_agent: also install the CloudWatch agent with ``AWS-ConfigureAWSPackage`` (an association
        that runs before the one that configures it). Default: False (the image has the agent).
    :param grant_permissions: attach a managed policy (``cloudwatch:PutMetricData`` into ``namespace`` only,
        ``ssm:GetParameter`` on the configuration parameter only, ``ec2:DescribeTags``) to the roles of the
        stack's tuned launches. Default: False (the roles have what the agent needs, e.g.
        ``CloudWatchAgentServerPolicy``).
    :param kernel_log_group_name: a CloudWatch Logs log group that receives the machines' kernel log: adds a
        metric filter counting its ``audit_lost=`` lines (``AuditLostMessages`` in ``namespace``) and an
        alarm on it. Default: None.
    """

    interval: int = DEFAULT_INTERVAL_S
    namespace: str = NAMESPACE
    lost_events_threshold: int = 0
    alarm_period: Duration = field(default_factory=lambda: Duration.minutes(5))
    backlog_use_percent: Union[int, float] = 80
    alarm_topic: Any = None
    dashboard: bool = True
    install_agent: bool = False
    grant_permissions: bool = False
    kernel_log_group_name: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", _require_int("interval", self.interval, MIN_INTERVAL_S,
                                                          MAX_INTERVAL_S))
        ns = self.namespace
        if not _literal(ns) or not _NAMESPACE_RE.match(ns) or ns.upper().startswith("AWS/"):
            raise ValueError(
                "namespace must be 1..255 of letters, digits and . - _ / # : space, not starting with AWS/ "
                f"(reserved), got {ns!r}"
            )
        object.__setattr__(
            self, "lost_events_threshold",
            _require_int("lost_events_threshold", self.lost_events_threshold, 0, 2**31 - 1),
        )
        period = self.alarm_period
        if not isinstance(period, Duration) or Token.is_unresolved(period.to_string()):
            raise ValueError(f"alarm_period must be a Duration (e.g. Duration.minutes(5)), got {period!r}")
        seconds = period.to_seconds()
        if seconds % 60 or not 60 <= seconds <= _MAX_ALARM_PERIOD_S:
            raise ValueError(
                "alarm_period must be whole minutes from 1 minute to 1 day (the agent publishes one "
                f"datapoint a minute), got {seconds} seconds"
            )
        use = self.backlog_use_percent
        if isinstance(use, bool) or not isinstance(use, (int, float)) or not 0 < use < 100:
            raise ValueError(f"backlog_use_percent must be a number above 0 and below 100, got {use!r}")
        topic = self.alarm_topic
        if topic is not None and topic is not True and not _is_topic(topic):
            raise ValueError(
                f"alarm_topic must be None (no actions), True (a new topic) or an sns.ITopic, got {topic!r}"
            )
        for name in ("dashboard", "install_agent", "grant_permissions"):
            validate_flag(name, getattr(self, name))
        group = self.kernel_log_group_name
        if group is not None and not (
            isinstance(group, str) and (Token.is_unresolved(group) or _LOG_GROUP_RE.match(group))
        ):
            raise ValueError(
                f"kernel_log_group_name must be a log group name (1..512 of letters, digits and . - _ / #), "
                f"got {group!r}"
            )


def monitoring_options(value: Any) -> Optional[MonitoringOptions]:
    """``AuditBacklog(monitoring=...)``: None or False (off), True (``MonitoringOptions()``) or a
    ``MonitoringOptions``; anything else is a ValueError naming ``monitoring``."""
    if value is None or value is False:
        return None
    if value is True:
        return MonitoringOptions()
    if isinstance(value, MonitoringOptions):
        return value
    raise ValueError(f"monitoring must be None, True or a MonitoringOptions, got {value!r}")


def agent_config(namespace: str = NAMESPACE) -> Dict[str, Any]:
    """The CloudWatch agent configuration for our input only: the StatsD listener on the sampler's port, the
    namespace, the dimensions the agent appends and aggregates by. Appended to the agent's own configuration
    (``configure (append)``), so it names nothing else."""
    port = STATSD_ADDRESS.rsplit(":", 1)[1]
    return {
        "metrics": {
            "namespace": namespace,
            "append_dimensions": {
                INSTANCE_DIMENSION: "${aws:InstanceId}",
                GROUP_DIMENSION: "${aws:AutoScalingGroupName}",
            },
            "aggregation_dimensions": [[INSTANCE_DIMENSION], [GROUP_DIMENSION]],
            "metrics_collected": {
                "statsd": {
                    "service_address": f":{port}",
                    "metrics_collection_interval": AGENT_COLLECTION_S,
                    "metrics_aggregation_interval": AGENT_AGGREGATION_S,
                }
            },
        }
    }


def _short_id(construct: IConstruct) -> str:
    """A construct id for the alarms of one instance or group: its path below its stack, letters and digits
    only."""
    path = construct.node.path
    stack_path = Stack.of(construct).node.path
    if stack_path and path.startswith(stack_path + "/"):
        path = path[len(stack_path) + 1:]
    return re.sub(r"[^A-Za-z0-9]", "", path) or "Target"


def _l1_of(target: Any, l2: type, l1: type) -> Tuple[CfnResource, IConstruct]:
    """The L1 resource (whose Ref is the dimension value) and the construct that names it."""
    if isinstance(target, l2):
        return target.node.default_child, target  # type: ignore[return-value]
    if isinstance(target, l1):
        parent = target.node.scope
        return target, parent if isinstance(parent, l2) else target
    raise TypeError


class AuditBacklogMonitoring(Construct):
    """The sampler's metrics in CloudWatch for one stack's machines: the agent configuration and the
    association that applies it, alarms per Auto Scaling group and per Instance, a dashboard.

    ``AuditBacklog.apply_to(app, monitoring=True)`` (or ``AuditBacklog(monitoring=True)``) adds one to every
    stack with a tuned launch, with that stack's tuned Instances and groups, and turns the sampler on in every
    launch's block. Used alone (the sampler comes from the user data block or the association with
    ``monitor_interval``), give it the machines to alarm on.

    :param instances: ``ec2.Instance`` or ``ec2.CfnInstance``: an alarm pair each (dimension ``InstanceId``).
        Default: none. More with :meth:`add_instance`.
    :param groups: ``autoscaling.AutoScalingGroup`` or ``autoscaling.CfnAutoScalingGroup``: an alarm pair each
        (dimension ``AutoScalingGroupName``). Default: none. More with :meth:`add_group`.
    :param interval, namespace, lost_events_threshold, alarm_period, backlog_use_percent, alarm_topic,
        dashboard, install_agent, grant_permissions, kernel_log_group_name: see :class:`MonitoringOptions`
        (same defaults).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        instances: Optional[Sequence[Any]] = None,
        groups: Optional[Sequence[Any]] = None,
        interval: int = MonitoringOptions.interval,
        namespace: str = MonitoringOptions.namespace,
        lost_events_threshold: int = MonitoringOptions.lost_events_threshold,
        alarm_period: Optional[Duration] = None,
        backlog_use_percent: Union[int, float] = MonitoringOptions.backlog_use_percent,
        alarm_topic: Any = None,
        dashboard: bool = MonitoringOptions.dashboard,
        install_agent: bool = MonitoringOptions.install_agent,
        grant_permissions: bool = MonitoringOptions.grant_permissions,
        kernel_log_group_name: Optional[str] = None,
    ) -> None:
        # Validate everything before any child exists (a ValueError leaves no half-built construct behind).
        options = MonitoringOptions(
            interval=interval,
            namespace=namespace,
            lost_events_threshold=lost_events_threshold,
            alarm_period=Duration.minutes(5) if alarm_period is None else alarm_period,
            backlog_use_percent=backlog_use_percent,
            alarm_topic=alarm_topic,
            dashboard=dashboard,
            install_agent=install_agent,
            grant_permissions=grant_permissions,
            kernel_log_group_name=kernel_log_group_name,
        )
        instances = _sequence("instances", instances)
        groups = _sequence("groups", groups)
        super().__init__(scope, id)
        self.options = options
        self._targets: Dict[str, Tuple[str, Any]] = {}  # jsii key of the L1 -> (dimension, Ref)
        self._roles: List[Any] = []
        #: Every alarm, in the order they were added.
        self.alarms: List[cloudwatch.Alarm] = []

        self.parameter = ssm.StringParameter(
            self,
            "AgentConfig",
            parameter_name=Fn.join("", [PARAMETER_PREFIX, Aws.STACK_NAME, "-", self.node.addr[:8]]),
            simple_name=True,
            description="cdk-audit-backlog: CloudWatch agent input for the audit backlog sampler (StatsD)",
            string_value=json.dumps(agent_config(options.namespace), sort_keys=True, separators=(",", ":")),
        )
        stack_target = AssociationTarget.stack_instances()
        targets = [ssm.CfnAssociation.TargetProperty(key=stack_target.key, values=list(stack_target.values))]
        self.install_association: Optional[ssm.CfnAssociation] = None
        if install_agent:
            self.install_association = ssm.CfnAssociation(
                self,
                "InstallAgent",
                name=CONFIGURE_PACKAGE_DOCUMENT,
                targets=targets,
                parameters={"action": ["Install"], "name": [AGENT_PACKAGE]},
            )
        self.association = ssm.CfnAssociation(
            self,
            "ConfigureAgent",
            name=MANAGE_AGENT_DOCUMENT,
            targets=targets,
            parameters={
                "action": [MANAGE_AGENT_ACTION],
                "mode": ["ec2"],
                "optionalConfigurationSource": ["ssm"],
                "optionalConfigurationLocation": [self.parameter.parameter_name],
                "optionalRestart": ["yes"],
            },
        )
        if self.install_association is not None:
            self.association.node.add_dependency(self.install_association)

        self.policy: Optional[iam.ManagedPolicy] = None
        if grant_permissions:
            self.policy = iam.ManagedPolicy(
                self,
                "AgentPolicy",
                description="cdk-audit-backlog: what the CloudWatch agent needs to publish the audit metrics",
                statements=[
                    iam.PolicyStatement(
                        actions=["cloudwatch:PutMetricData"],
                        resources=["*"],  # PutMetricData has no resource-level permissions: the namespace
                        conditions={"StringEquals": {"cloudwatch:namespace": options.namespace}},
                    ),
                    iam.PolicyStatement(
                        actions=["ssm:GetParameter"], resources=[self.parameter.parameter_arn]
                    ),
                    # How the agent finds the AutoScalingGroupName it appends (no resource-level permissions).
                    iam.PolicyStatement(actions=["ec2:DescribeTags"], resources=["*"]),
                ],
            )

        self.topic: Optional[sns.ITopic] = None
        if alarm_topic is True:
            self.topic = sns.Topic(self, "AlarmTopic", display_name="cdk-audit-backlog alarms")
        elif alarm_topic is not None:
            self.topic = alarm_topic

        self.dashboard: Optional[cloudwatch.Dashboard] = None
        self._graphs: Dict[str, cloudwatch.GraphWidget] = {}
        if dashboard:
            self._graphs = {
                "AuditLostEvents": cloudwatch.GraphWidget(title="Audit events lost (Sum)", width=12),
                "AuditBacklogUsePercent": cloudwatch.GraphWidget(
                    title="Audit backlog use, % of the limit (Maximum)", width=12,
                    left_y_axis=cloudwatch.YAxisProps(min=0, max=100),
                ),
                "AuditBacklog": cloudwatch.GraphWidget(
                    title="Audit backlog (Maximum) against the limit (Minimum)", width=12
                ),
                "AuditBacklogDrift": cloudwatch.GraphWidget(
                    title="Limit below the policy's target (Maximum)", width=12
                ),
            }
            self.dashboard = cloudwatch.Dashboard(self, "Dashboard")
            graphs = list(self._graphs.values())
            self.dashboard.add_widgets(*graphs[:2])
            self.dashboard.add_widgets(*graphs[2:])

        self.metric_filter: Optional[logs.MetricFilter] = None
        if kernel_log_group_name is not None:
            self.metric_filter = logs.MetricFilter(
                self,
                "KernelLostEvents",
                log_group=logs.LogGroup.from_log_group_name(self, "KernelLog", kernel_log_group_name),
                filter_pattern=logs.FilterPattern.all_terms(KERNEL_LOG_PATTERN),
                metric_namespace=options.namespace,
                metric_name=KERNEL_LOG_METRIC,
                metric_value="1",
                default_value=0,
                unit=cloudwatch.Unit.COUNT,
            )
            lines = self.metric_filter.metric(statistic="Sum", period=options.alarm_period)
            self._alarm(
                "KernelLostEventsAlarm",
                lines,
                options.lost_events_threshold,
                f"The kernel log in {kernel_log_group_name} reports lost audit events ({KERNEL_LOG_PATTERN} "
                "lines): the audit backlog overflowed.",
            )
            if dashboard and self.dashboard is not None:
                self.dashboard.add_widgets(
                    cloudwatch.GraphWidget(title="Kernel log lines reporting lost audit events", left=[lines],
                                           width=24)
                )

        for instance in instances:
            self.add_instance(instance)
        for group in groups:
            self.add_group(group)

    # -- targets ----------------------------------------------------------------------------------------

    def add_instance(self, instance: Any) -> None:
        """Alarms (and dashboard lines) for one ``ec2.Instance`` or ``ec2.CfnInstance``; with
        ``grant_permissions``, the policy on its role. Adding the same instance again adds nothing."""
        try:
            resource, named = _l1_of(instance, ec2.Instance, ec2.CfnInstance)
        except TypeError:
            raise ValueError(f"instances must be ec2.Instance or ec2.CfnInstance, got {instance!r}") from None
        if self.watch(resource, named) and self.policy is not None:
            self.grant(named)

    def add_group(self, group: Any) -> None:
        """Alarms (and dashboard lines) for one ``autoscaling.AutoScalingGroup`` or ``CfnAutoScalingGroup``;
        with ``grant_permissions``, the policy on the role of a group that launches from a launch
        configuration (a group that launches from a launch template gets a warning: :meth:`grant` the
        template, which carries the role)."""
        try:
            resource, named = _l1_of(group, autoscaling.AutoScalingGroup, autoscaling.CfnAutoScalingGroup)
        except TypeError:
            raise ValueError(
                f"groups must be autoscaling.AutoScalingGroup or CfnAutoScalingGroup, got {group!r}"
            ) from None
        if self.watch(resource, named) and self.policy is not None:
            self.grant(named)

    def grant(self, launch: Any) -> bool:
        """Attaches the agent policy (``grant_permissions=True``) to the role of ``launch``: an
        ``ec2.Instance``, ``ec2.LaunchTemplate``, ``autoscaling.AutoScalingGroup`` (launch configuration) or
        the launch L1 of one of them. Where no role can be found, a warning names the launch; returns whether
        the policy was attached."""
        if self.policy is None:
            raise ValueError("grant needs grant_permissions=True")
        role, why = _role_for(launch)
        if role is None:
            node = launch if isinstance(launch, Construct) else None
            path = node.node.path if node is not None else repr(launch)
            Annotations.of(node or self).add_warning_v2(
                NO_ROLE_WARNING,
                f"cdk-audit-backlog: {path} gets no CloudWatch agent policy from AuditBacklogMonitoring("
                f"grant_permissions=True): {why}. Its agent publishes the audit metrics only if its role "
                f"allows cloudwatch:PutMetricData into {self.options.namespace} and ssm:GetParameter on "
                "the agent configuration parameter.",
            )
            return False
        if not any(r is role for r in self._roles):
            self._roles.append(role)
            self.policy.attach_to_role(role)
        return True

    def watch(self, resource: CfnResource, named: Optional[IConstruct] = None) -> bool:
        """The alarms and dashboard lines of one L1, an ``AWS::EC2::Instance`` or an
        ``AWS::AutoScaling::AutoScalingGroup`` (``named``: the construct its alarms are named after, default
        the L1), without touching roles. Returns False where it was watched already."""
        kind = resource.cfn_resource_type
        if kind not in _DIMENSION_OF:
            raise ValueError(f"watch: an Instance or AutoScalingGroup L1, got {kind}")
        dimension = _DIMENSION_OF[kind]
        named = resource if named is None else named
        key = resource.__jsii_ref__.ref  # type: ignore[attr-defined]
        if key in self._targets:
            return False
        value = resource.ref
        self._targets[key] = (dimension, value)
        base = _short_id(named)
        n = 1
        while self.node.try_find_child(f"{base}LostEvents") is not None:
            n += 1
            base = f"{_short_id(named)}{n}"
        label = named.node.path
        kind = "group" if dimension == GROUP_DIMENSION else "instance"
        lost = self._metric("AuditLostEvents", dimension, value, label)
        use = self._metric("AuditBacklogUsePercent", dimension, value, label)
        self._alarm(
            f"{base}LostEvents",
            lost,
            self.options.lost_events_threshold,
            f"Audit events lost on the {kind} {label} (the kernel's audit backlog overflowed): more than "
            f"{self.options.lost_events_threshold} in {self.options.alarm_period.to_minutes()} min.",
        )
        self._alarm(
            f"{base}BacklogUse",
            use,
            self.options.backlog_use_percent,
            f"The audit backlog on the {kind} {label} was more than "
            f"{self.options.backlog_use_percent} % full.",
        )
        if self._graphs:
            self._graphs["AuditLostEvents"].add_left_metric(lost)
            self._graphs["AuditBacklogUsePercent"].add_left_metric(use)
            backlog = self._graphs["AuditBacklog"]
            backlog.add_left_metric(self._metric("AuditBacklog", dimension, value, label))
            backlog.add_left_metric(self._metric("AuditBacklogLimit", dimension, value, f"{label} limit"))
            drift = self._metric("AuditBacklogDrift", dimension, value, label)
            self._graphs["AuditBacklogDrift"].add_left_metric(drift)
        return True

    def _metric(self, name: str, dimension: str, value: Any, label: str) -> cloudwatch.Metric:
        metric: Metric = BY_NAME[name]
        return cloudwatch.Metric(
            namespace=self.options.namespace,
            metric_name=metric.name,
            dimensions_map={dimension: value},
            statistic=metric.statistic,
            period=self.options.alarm_period,
            label=label,
        )

    def _alarm(self, id: str, metric: cloudwatch.IMetric, threshold: Union[int, float], text: str) -> None:
        alarm = metric.create_alarm(
            self,
            id,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=f"cdk-audit-backlog: {text}",
        )
        if self.topic is not None:
            action = cloudwatch_actions.SnsAction(self.topic)
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
        self.alarms.append(alarm)

    @classmethod
    def from_options(
        cls, scope: Construct, id: str, options: Optional[MonitoringOptions] = None, **targets: Any
    ) -> "AuditBacklogMonitoring":
        """A monitoring construct with ``options`` (default ``MonitoringOptions()``) and ``instances`` /
        ``groups``."""
        options = MonitoringOptions() if options is None else options
        if not isinstance(options, MonitoringOptions):
            raise ValueError(f"options must be a MonitoringOptions, got {options!r}")
        keywords = {name: getattr(options, name) for name in MonitoringOptions.__dataclass_fields__}
        return cls(scope, id, **keywords, **targets)


def _sequence(name: str, value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return list(value)


def _group_role(group: autoscaling.AutoScalingGroup) -> Any:
    try:
        return group.role
    except Exception:  # jsii raises when the group launches from a launch template
        return None


def _role_for(launch: Any) -> Tuple[Any, str]:
    """The role of a launch L2 or L1 (any ``IRole``: an imported role's name is enough to attach a managed
    policy), or None and why not."""
    if isinstance(launch, CfnResource):
        role, why = _role_of(launch)
        if role is not None or "imported" not in why:
            return role, why
        launch = launch.node.scope  # an imported role is fine here: take it from the L2
    if isinstance(launch, (ec2.Instance, ec2.LaunchTemplate)):
        role = launch.role
        if role is None:
            return None, "it has no role (a launch template with an instance profile only, or none)"
        return role, ""
    if isinstance(launch, autoscaling.AutoScalingGroup):
        role = _group_role(launch)
        if role is None:
            return None, "it launches from a launch template: grant() the template, which carries the role"
        return role, ""
    return None, f"it is not an Instance, LaunchTemplate or AutoScalingGroup ({type(launch).__name__})"
