"""The CloudWatch agent's StatsD input, simulated: one sampler datagram -> ``PutMetricData`` entries.

This is the one simulated step between the machine and CloudWatch in the tests and the demo (``health``'s
moto tests, ``make demo``): the sampler's datagram text is what the script sends, the CloudWatch side is
moto's real ``PutMetricData``/``GetMetricData``/``ListMetrics``; only the agent in between is stood in for
by :func:`metric_data`. What it does, as the agent's configuration asks (``monitoring_metrics``):

- each line ``NAME:VALUE|TYPE[|#KEY:VALUE,...]`` is one metric; a counter (``c``) is summed over the
  agent's aggregation interval and a gauge (``g``) keeps its last value: one datagram per interval gives
  its own value either way;
- DataDog-style tags (``#Owner:auditbeat``) become dimensions;
- ``append_dimensions`` adds ``InstanceId`` and, in an Auto Scaling group, ``AutoScalingGroupName``;
- ``aggregation_dimensions`` ``[["InstanceId"], ["AutoScalingGroupName"]]`` publishes, besides the series
  with every dimension, one rolled up to ``InstanceId`` alone and one to ``AutoScalingGroupName`` alone
  (the same series once when they coincide);
- the unit is the contract's.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cdk_audit_backlog.monitoring_metrics import BY_NAME, GROUP_DIMENSION, INSTANCE_DIMENSION, NAMESPACE

__all__ = ["metric_data", "put_datagram", "datagram", "parse"]


def datagram(owner: Optional[str] = None, **values: float) -> str:
    """A sampler datagram from metric values (``AuditBacklog=12``) and an optional socket owner."""
    lines = [f"{name}:{value:g}|{BY_NAME[name].statsd_type}" for name, value in values.items()]
    if owner is not None:
        lines.append(f"AuditSocketOwner:1|g|#Owner:{owner}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> List[Tuple[str, str, str, Dict[str, str]]]:
    """Each StatsD line ``NAME:VALUE|TYPE[|#KEY:VALUE,...]`` of a datagram as (name, value, type, tags), in
    order; blank lines are skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name_value, kind, *rest = line.split("|")
        name, value = name_value.split(":", 1)
        tags: Dict[str, str] = {}
        for part in rest:
            if part.startswith("#"):
                for tag in part[1:].split(","):
                    key, _, val = tag.partition(":")
                    tags[key] = val
        out.append((name, value, kind, tags))
    return out


def metric_data(
    text: str,
    instance_id: str,
    group: Optional[str] = None,
    timestamp: Optional[_dt.datetime] = None,
) -> List[Dict[str, Any]]:
    """The ``MetricData`` entries the agent would put for one datagram from ``instance_id``."""
    stamp = timestamp or _dt.datetime.now(_dt.timezone.utc)
    out: List[Dict[str, Any]] = []
    for name, value, kind, tags in parse(text):
        metric = BY_NAME[name]
        if kind != metric.statsd_type:
            raise ValueError(f"{name}: StatsD type {kind!r}, the contract says {metric.statsd_type!r}")
        full = {INSTANCE_DIMENSION: instance_id, **({GROUP_DIMENSION: group} if group else {}), **tags}
        rollups: Sequence[Dict[str, str]] = [full, {INSTANCE_DIMENSION: instance_id}]
        if group:
            rollups = [*rollups, {GROUP_DIMENSION: group}]
        seen = set()
        for dims in rollups:
            key = tuple(sorted(dims.items()))
            if key in seen:
                continue
            seen.add(key)
            out.append({
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                "Timestamp": stamp,
                "Value": float(value),
                "Unit": metric.unit,
            })
    return out


def put_datagram(cloudwatch: Any, text: str, instance_id: str, group: Optional[str] = None,
                 timestamp: Optional[_dt.datetime] = None) -> None:
    """Put one datagram's metrics into CloudWatch (``cloudwatch``: a boto3 client), as the agent would."""
    entries = metric_data(text, instance_id, group, timestamp)
    for i in range(0, len(entries), 1000):  # PutMetricData takes up to 1000 entries a call
        cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=entries[i : i + 1000])
