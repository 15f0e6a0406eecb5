"""What the on-machine sampler publishes, defined once for every reader of it.

The sampler (``userdata/audit-backlog.sh``, mode ``sample``, run by a systemd timer) takes one
``auditctl -s`` per interval and sends one StatsD datagram to the CloudWatch agent's listener on the
machine. The agent's configuration, the alarms, the dashboard and the ``health`` command read the names
below; the shell writes the same names (``tests/test_monitoring_contract.py`` joins the two).

StatsD lines, one per metric: ``NAME:VALUE|TYPE`` (``c`` a counter the agent sums over its aggregation
interval, ``g`` a gauge), and for the socket owner ``AuditSocketOwner:1|g|#Owner:COMMAND`` (the agent reads
DataDog-style tags as dimensions). The agent adds ``InstanceId`` and, in an Auto Scaling group,
``AutoScalingGroupName`` (``append_dimensions``), and aggregates by each of them alone
(``aggregation_dimensions``), which is what the alarms and ``health`` query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = [
    "NAMESPACE",
    "STATSD_ADDRESS",
    "OWNER_DIMENSION",
    "INSTANCE_DIMENSION",
    "GROUP_DIMENSION",
    "DEFAULT_INTERVAL_S",
    "MIN_INTERVAL_S",
    "MAX_INTERVAL_S",
    "Metric",
    "METRICS",
    "BY_NAME",
    "KNOWN_OWNERS",
]

#: The CloudWatch namespace the agent puts the metrics in (the agent configuration sets it).
NAMESPACE = "CdkAuditBacklog"
#: Where the sampler sends its datagram: the agent's StatsD listener (UDP, the agent's default port).
STATSD_ADDRESS = "127.0.0.1:8125"
OWNER_DIMENSION = "Owner"
INSTANCE_DIMENSION = "InstanceId"
GROUP_DIMENSION = "AutoScalingGroupName"
#: The sampling interval: one ``auditctl -s`` per interval.
DEFAULT_INTERVAL_S = 60
MIN_INTERVAL_S = 10
MAX_INTERVAL_S = 3600
#: The commands we name as owners of the audit socket (``auditctl -s`` ``pid``'s command); any other
#: command is published as it is, and ``none`` when no process owns the socket.
KNOWN_OWNERS = ("auditd", "auditbeat", "osqueryd", "go-audit", "none")


@dataclass(frozen=True)
class Metric:
    """One published metric.

    :param name: the StatsD name, which is also the CloudWatch metric name.
    :param statsd_type: ``c`` (counter: the agent sums it) or ``g`` (gauge: the last value).
    :param unit: the CloudWatch unit the agent configuration gives it.
    :param statistic: the statistic alarms and ``health`` read.
    :param meaning: what one value says.
    """

    name: str
    statsd_type: str
    unit: str
    statistic: str
    meaning: str


METRICS: Tuple[Metric, ...] = (
    Metric("AuditLostEvents", "c", "Count", "Sum",
           "audit events the kernel lost since the previous sample (its lost counter's increase; a counter "
           "reset at boot counts from 0)"),
    Metric("AuditBacklog", "g", "Count", "Maximum", "audit buffers queued in the kernel at the sample"),
    Metric("AuditBacklogLimit", "g", "Count", "Minimum", "the kernel's backlog_limit (0: no limit)"),
    Metric("AuditBacklogUsePercent", "g", "Percent", "Maximum",
           "the backlog as a percentage of the limit (0 when there is no limit)"),
    Metric("AuditBacklogWaitTime", "g", "None", "Maximum", "the kernel's backlog_wait_time, in kernel ticks"),
    Metric("AuditBacklogWaitTimeActual", "g", "None", "Maximum",
           "backlog_wait_time_actual: time callers waited on a full backlog (newer kernels only)"),
    Metric("AuditBacklogTarget", "g", "Count", "Maximum", "the limit our policy chose for this machine"),
    Metric("AuditBacklogDrift", "g", "Count", "Maximum",
           "the target minus the limit in force when the limit in force is below the target, else 0"),
    Metric("AuditSocketOwner", "g", "None", "Maximum",
           "1, with the dimension Owner: the command that owns the audit socket (auditd, auditbeat, "
           "osqueryd, go-audit, ...; none)"),
)

BY_NAME: Dict[str, Metric] = {m.name: m for m in METRICS}
