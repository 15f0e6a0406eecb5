"""``health``: what the machines of a deployed stack did with their audit backlog, from CloudWatch.

The on-machine sampler sends one StatsD datagram per interval to the CloudWatch agent, which puts the
metrics of :mod:`.monitoring_metrics` into CloudWatch (namespace, names, statistics and dimensions are read
from there, never retyped). For each machine of the stack (found as ``verify`` finds them) this reads, over
the last ``hours``:

- ``GetMetricData``, one query per machine and metric on the series the agent aggregates by ``InstanceId``
  alone, at most :data:`MAX_QUERIES` queries per call: lost events (Sum of ``AuditLostEvents``), peak
  backlog (Maximum of ``AuditBacklog``), the limit (``AuditBacklogLimit``, its contract statistic: the
  smallest limit in force), peak use % (Maximum of ``AuditBacklogUsePercent``) and drift (Maximum of
  ``AuditBacklogDrift``);
- ``ListMetrics`` on ``AuditSocketOwner`` with the machine's ``InstanceId``: one series per ``Owner`` seen;
  the owner is the one whose latest datapoint is the most recent (a second ``GetMetricData`` over those
  series).

``recommend`` sizes the limit from that evidence; see :func:`recommend` for the rule.
"""

from __future__ import annotations

import datetime as _dt
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import instance_memory
from .aws_api import aws_errors, boto3_module, client_config
from .compliance import FLOOR_MEMORY_WARNING_SHARE, PROFILES
from .monitoring_metrics import BY_NAME, INSTANCE_DIMENSION, NAMESPACE, OWNER_DIMENSION
from .policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy
from .verify import Machine, find_machines

__all__ = [
    "MAX_QUERIES",
    "MIN_HOURS",
    "MAX_HOURS",
    "RECOMMEND_MEMORY_SHARE",
    "NEAR_LIMIT_PERCENT",
    "FAR_BELOW_SHARE",
    "MachineHealth",
    "Recommendation",
    "recommend",
    "stack_health",
    "MONITORING_HINT",
]

#: Most queries one ``GetMetricData`` call takes (the API's limit).
MAX_QUERIES = 500
#: ``--hours`` range: up to 63 days, as long as CloudWatch keeps the 5-minute data points (1-minute ones 15
#: days); the window is read as one period, so coarser points lose nothing here.
MIN_HOURS = 1
MAX_HOURS = 1512
#: The memory bound of a recommendation: the largest power of two whose worst case (x 8970 bytes) fits in
#: this share of the machine's memory (the share over which a compliance floor draws a synth warning).
RECOMMEND_MEMORY_SHARE = FLOOR_MEMORY_WARNING_SHARE
#: A peak at or above this share of the limit (or any lost event) asks for a larger limit.
NEAR_LIMIT_PERCENT = 50
#: A peak below limit / this over at least :data:`LOWER_AFTER_HOURS` says the limit could be smaller.
FAR_BELOW_SHARE = 64
LOWER_AFTER_HOURS = 24
#: The compliance floor (STIG and CIS): a limit at or above it is never recommended below it.
COMPLIANCE_FLOOR = min(p.floor for p in PROFILES.values())

MONITORING_HINT = (
    "no data: turn monitoring on (the tuning option monitor_interval=60 installs the sampler; the CloudWatch "
    "agent with its StatsD listener must run on the machine: see docs/cli.md, health), or widen --hours"
)

#: The metrics read per machine: (key, metric name, statistic).
_SERIES: Tuple[Tuple[str, str], ...] = (
    ("lost", "AuditLostEvents"),
    ("peak", "AuditBacklog"),
    ("limit", "AuditBacklogLimit"),
    ("use", "AuditBacklogUsePercent"),
    ("drift", "AuditBacklogDrift"),
)
_OWNER_METRIC = "AuditSocketOwner"


@dataclass(frozen=True)
class Recommendation:
    """What ``--recommend`` says for one machine.

    :param action: ``raise``, ``lower`` (optional: the peak stayed far below), ``keep`` or ``none`` (no
        data, unknown memory, no limit in force).
    :param limit: the recommended limit (a power of two), or None where there is nothing to set.
    :param bound: the memory bound for the machine's type (None: memory unknown).
    :param bound_cut: the memory bound lowered what the evidence asked for.
    :param setting: what to set to get ``limit`` (``AuditBacklog(policy=BacklogPolicy(memory_fraction=...))``
        when that fraction gives exactly ``limit`` for this type, else ``AuditBacklog(backlog_limit=...)``).
    :param reason: one sentence.
    """

    action: str
    limit: Optional[int]
    bound: Optional[int]
    bound_cut: bool
    setting: str
    reason: str


@dataclass
class MachineHealth:
    """One machine of the stack over the window. Metric fields are None when CloudWatch had no data."""

    instance_id: str
    label: str
    group: Optional[str]
    instance_type: Optional[str]
    memory_mib: Optional[int]
    state: str
    lost: Optional[int] = None
    peak_backlog: Optional[int] = None
    limit: Optional[int] = None
    use_percent: Optional[float] = None
    drift: Optional[int] = None
    owner: Optional[str] = None
    recommendation: Optional[Recommendation] = field(default=None)

    @property
    def has_data(self) -> bool:
        return any(v is not None for v in (self.lost, self.peak_backlog, self.limit, self.use_percent))

    @property
    def lost_events(self) -> bool:
        return bool(self.lost)


# ------------------------------------------------------------------------------------ recommendation


def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pow2_floor(n: int) -> int:
    return 1 if n <= 1 else 1 << (n.bit_length() - 1)


def memory_bound(memory_mib: int, policy: BacklogPolicy) -> int:
    """The largest power of two whose worst case fits in :data:`RECOMMEND_MEMORY_SHARE` of ``memory_mib``
    and that is not above ``policy.maximum`` (1 when none fits)."""
    fits = memory_mib * 1024 * 1024 * int(RECOMMEND_MEMORY_SHARE * 1_000_000) // 1_000_000
    return _pow2_floor(min(policy.maximum, fits // MAX_AUDIT_MESSAGE_LENGTH))


def _setting(limit: int, memory_mib: int, policy: BacklogPolicy) -> str:
    """What to set to get ``limit`` on a machine of ``memory_mib``: the smallest memory fraction (in parts
    per million) whose policy gives exactly ``limit``, if there is one within the policy's bounds, else the
    fixed limit."""
    fixed = f"AuditBacklog(backlog_limit={limit})"
    if memory_mib <= 0:
        return fixed
    ppm = math.ceil(limit * MAX_AUDIT_MESSAGE_LENGTH * 1_000_000 / (memory_mib * 1024 * 1024))
    text = f"{ppm / 1_000_000:.6f}".rstrip("0")
    try:
        candidate = BacklogPolicy(memory_fraction=float(text), minimum=policy.minimum, maximum=policy.maximum)
    except ValueError:  # above 0.25
        return fixed
    if candidate.limit_for_memory(memory_mib) != limit:
        return fixed
    return f"AuditBacklog(policy=BacklogPolicy(memory_fraction={text})) or {fixed}"


def recommend(
    *,
    limit: Optional[int],
    peak: Optional[int],
    lost: Optional[int],
    memory_mib: Optional[int],
    hours: int,
    policy: Optional[BacklogPolicy] = None,
) -> Recommendation:
    """The limit the evidence asks for on one machine.

    - The *floor* is the smallest power of two at or above ``policy.minimum``, and 8192 (the compliance
      floor) when the current limit is at least 8192. The *memory bound* is the largest power of two whose
      worst case (limit x 8970 bytes) fits in 5 % of the type's memory, and not above ``policy.maximum``.
    - Events lost, or a peak at or above 50 % of the limit: *raise* to the smallest power of two at or above
      2 x peak (and at least 2 x the current limit when events were lost, and at least the floor), cut to
      the memory bound (``bound_cut``). Nothing above the current limit within the bound: *keep*, and say
      the bound is what stops it.
    - No event lost and a peak below 1/64 of the limit over at least 24 hours: *lower* (optional) to the
      smallest power of two at or above 4 x peak, never below the floor (nor above the bound); *keep* when
      that is not below the current limit.
    - Otherwise *keep*. No limit data, a limit of 0 (no limit at all) or an unknown memory: *none*.
    """
    policy = policy or BacklogPolicy()
    if limit is None or peak is None:
        return Recommendation("none", None, None, False, "", "no data")
    if memory_mib is None:
        return Recommendation("none", None, None, False, "", "instance type memory unknown: no bound")
    if limit <= 0:
        return Recommendation("none", None, None, False, "", "no limit in force (0): nothing to size")
    bound = memory_bound(memory_mib, policy)
    floor = _pow2_ceil(policy.minimum)
    if limit >= COMPLIANCE_FLOOR:
        floor = max(floor, COMPLIANCE_FLOOR)
    lost = lost or 0
    pct = 100 * peak / limit

    def done(action: str, value: Optional[int], cut: bool, reason: str) -> Recommendation:
        setting = "" if value is None else _setting(value, memory_mib, policy)
        return Recommendation(action, value, bound, cut, setting, reason)

    if lost or pct >= NEAR_LIMIT_PERCENT:
        why = f"{lost} event(s) lost" if lost else f"peak {peak} is {pct:.0f} % of the limit {limit}"
        want = _pow2_ceil(max(2 * peak, 2 * limit if lost else 0, floor))
        if floor > bound:
            return done("keep", None, True, f"{why}, but the policy minimum ({policy.minimum}) is above the "
                        f"memory bound {bound}: no power of two fits")
        value = min(want, bound)
        cut = value < want
        if value <= limit:
            return done("keep", None, cut, f"{why}, but the memory bound ({bound}, 5 % of {memory_mib} MiB) "
                        f"is not above the limit {limit}: make the reader (auditd) keep up instead")
        extra = f"; the memory bound cuts {want} to {bound}" if cut else ""
        rule = ">= 2 x peak and 2 x the limit" if lost else ">= 2 x peak"
        return done("raise", value, cut, f"{why}: raise to {value} ({rule}){extra}")
    if peak * FAR_BELOW_SHARE < limit and hours >= LOWER_AFTER_HOURS:
        value = max(floor, min(_pow2_ceil(4 * peak), bound))
        if value <= bound and value < limit:
            return done("lower", value, False, f"peak {peak} stayed below 1/{FAR_BELOW_SHARE} of the limit "
                        f"{limit} for {hours} h: {value} (>= 4 x peak, >= {floor}) would do; optional")
    return done("keep", None, False, f"peak {peak} is {pct:.0f} % of the limit {limit}, no event lost")


# --------------------------------------------------------------------------------------- CloudWatch


def _metric(name: str, dimensions: Sequence[Dict[str, str]]) -> Dict[str, Any]:
    return {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": list(dimensions)}


def _get_metric_data(
    cw: Any, queries: List[Dict[str, Any]], start: _dt.datetime, end: _dt.datetime, *, descending: bool
) -> Dict[str, List[Tuple[_dt.datetime, float]]]:
    """``{query id: [(timestamp, value), ...]}``, at most :data:`MAX_QUERIES` queries a call, every page."""
    out: Dict[str, List[Tuple[_dt.datetime, float]]] = {}
    for i in range(0, len(queries), MAX_QUERIES):
        kwargs: Dict[str, Any] = {
            "MetricDataQueries": queries[i : i + MAX_QUERIES],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampDescending" if descending else "TimestampAscending",
        }
        while True:
            resp = cw.get_metric_data(**kwargs)
            for r in resp.get("MetricDataResults", []):
                out.setdefault(r["Id"], []).extend(zip(r.get("Timestamps", []), r.get("Values", [])))
            token = resp.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return out


def _aggregate(statistic: str, values: Sequence[float]) -> Optional[float]:
    if not values:
        return None
    if statistic == "Sum":
        return sum(values)
    return min(values) if statistic == "Minimum" else max(values)


def _owner_series(cw: Any, instance_id: str) -> List[List[Dict[str, str]]]:
    """The dimension sets of the ``AuditSocketOwner`` series of one machine that carry an ``Owner``."""
    found = []
    kwargs: Dict[str, Any] = {
        "Namespace": NAMESPACE,
        "MetricName": _OWNER_METRIC,
        "Dimensions": [{"Name": INSTANCE_DIMENSION, "Value": instance_id}],
    }
    for page in cw.get_paginator("list_metrics").paginate(**kwargs):
        for m in page.get("Metrics", []):
            dims = [{"Name": d["Name"], "Value": d["Value"]} for d in m.get("Dimensions", [])]
            if any(d["Name"] == OWNER_DIMENSION for d in dims):
                found.append(dims)
    return found


def stack_health(
    stack: str,
    *,
    session: Any = None,
    region: Optional[str] = None,
    hours: int = 24,
    policy: Optional[BacklogPolicy] = None,
    recommend_limits: bool = False,
    max_workers: int = 8,
    now: Optional[_dt.datetime] = None,
) -> List[MachineHealth]:
    """One :class:`MachineHealth` per machine of ``stack`` (terminated ones left out), by instance id."""
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be from {MIN_HOURS} to {MAX_HOURS}, got {hours}")
    policy = policy or BacklogPolicy()
    boto3 = boto3_module()
    session = session or boto3.session.Session(region_name=region)
    config = client_config()
    kw = {"region_name": region} if region else {}
    what = f"stack {stack}"
    cfn, ec2, asg, cw = aws_errors(
        what,
        lambda: [
            session.client(s, config=config, **kw)
            for s in ("cloudformation", "ec2", "autoscaling", "cloudwatch")
        ],
    )
    found = find_machines(cfn, ec2, asg, stack)
    machines: List[Machine] = sorted(
        (m for m in found.machines.values() if m.state not in ("terminated", "gone")),
        key=lambda m: m.instance_id,
    )
    end = (now or _dt.datetime.now(_dt.timezone.utc)).replace(second=0, microsecond=0)
    end += _dt.timedelta(minutes=1)
    start = end - _dt.timedelta(hours=hours)
    period = hours * 3600

    queries: List[Dict[str, Any]] = []
    for n, m in enumerate(machines):
        dims = [{"Name": INSTANCE_DIMENSION, "Value": m.instance_id}]
        for key, name in _SERIES:
            queries.append({
                "Id": f"{key}{n}",
                "MetricStat": {"Metric": _metric(name, dims), "Period": period,
                               "Stat": BY_NAME[name].statistic},
                "ReturnData": True,
            })
    data = aws_errors(f"{what}: GetMetricData", lambda: _get_metric_data(cw, queries, start, end,
                                                                         descending=False))

    def owners_of(m: Machine) -> List[List[Dict[str, str]]]:
        return aws_errors(f"{what}: ListMetrics", lambda: _owner_series(cw, m.instance_id))

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        owner_sets = list(pool.map(owners_of, machines))
    # The latest owner: each series' newest datapoint, at a resolution of at most 1440 points a window.
    owner_queries: List[Dict[str, Any]] = []
    owner_names: Dict[str, Tuple[int, str]] = {}
    # (a multiple of 300 s: CloudWatch's rule for a start time more than 15 days ago)
    fine = max(300, math.ceil(period / 1440 / 300) * 300)
    for n, sets in enumerate(owner_sets):
        for k, dims in enumerate(sets):
            qid = f"owner{n}x{k}"
            owner_names[qid] = (n, next(d["Value"] for d in dims if d["Name"] == OWNER_DIMENSION))
            owner_queries.append({
                "Id": qid,
                "MetricStat": {"Metric": _metric(_OWNER_METRIC, dims), "Period": fine,
                               "Stat": BY_NAME[_OWNER_METRIC].statistic},
                "ReturnData": True,
            })
    owner_data = aws_errors(f"{what}: GetMetricData", lambda: _get_metric_data(cw, owner_queries, start, end,
                                                                               descending=True))
    latest: Dict[int, Tuple[_dt.datetime, str]] = {}
    for qid, points in owner_data.items():
        if not points or qid not in owner_names:
            continue
        n, owner = owner_names[qid]
        newest = max(t for t, _ in points)
        if n not in latest or (newest, owner) > latest[n]:
            latest[n] = (newest, owner)

    rows: List[MachineHealth] = []
    for n, m in enumerate(machines):
        mib = instance_memory.memory_mib(m.instance_type) if m.instance_type else None
        row = MachineHealth(m.instance_id, m.label, m.group, m.instance_type, mib, m.state)
        values = {
            key: _aggregate(BY_NAME[name].statistic, [v for _, v in data.get(f"{key}{n}", [])])
            for key, name in _SERIES
        }
        as_int = {k: None if v is None else int(round(v)) for k, v in values.items()}
        row.lost, row.peak_backlog, row.limit, row.drift = (
            as_int["lost"], as_int["peak"], as_int["limit"], as_int["drift"])
        row.use_percent = values["use"]
        if row.use_percent is None and row.peak_backlog is not None and row.limit:
            row.use_percent = 100 * row.peak_backlog / row.limit
        if n in latest:
            row.owner = latest[n][1]
        if recommend_limits:
            row.recommendation = recommend(
                limit=row.limit, peak=row.peak_backlog, lost=row.lost, memory_mib=mib, hours=hours,
                policy=policy,
            )
        rows.append(row)
    return rows
