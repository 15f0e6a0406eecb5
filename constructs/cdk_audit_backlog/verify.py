"""``verify``: checks that every instance of a deployed stack booted with the block and the expected limit.

CloudFormation gives the stack's instances, ASGs and launch templates; Auto Scaling their instances; EC2 the
types, stored user data and console output. The block is read with :mod:`.testing`, which is written
independently of the code that produces it: the checker must not share code with the producer, or a bug in
one would hide in both.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import instance_memory
from .aws_api import NotFound, aws_errors, boto3_module, client_config, deployed_template
from .deployed_context import user_data_kept
from .policy import BacklogPolicy
from .template_relations import AUTO_SCALING_GROUP, INSTANCE, LAUNCH_TEMPLATE
from .testing import METADATA_KEY, OWNER_LINE_RE, blocks


def decode_stored_user_data(value: Optional[str]) -> Optional[str]:
    """Text of user data as EC2 returns it (base64; possibly gzip, which cloud-init undoes too). None for
    none.

    A MIME multipart document comes back whole: the block readers below take its shell parts with
    :mod:`.testing`'s reader, the one ``check`` and ``report`` use (written independently of the code that
    produces the block: the checker must not share code with the producer).
    """
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raw = value.encode()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _block_settings(user_data: Optional[str]) -> Optional[Dict[str, str]]:
    """The ``CAB_*`` lines of the first block that has both markers, in order, or None when there is none."""
    if not user_data:
        return None
    return next((b.settings for b in blocks(user_data) if b.closed), None)


# A value as the block's shell reads it: quotes and trailing blanks allowed.
_TARGET_RE = re.compile(r"['\"]?([0-9]+|auto)['\"]?\s*")
_SOURCE_RE = re.compile(r"['\"]?([a-z0-9][a-z0-9.-]*)/([0-9]+)MiB['\"]?\s*")
_MIXED_RE = re.compile(r"['\"]?mixed['\"]?\s*")


def block_target(user_data: Optional[str]) -> Tuple[bool, Optional[str]]:
    """``(block present, CAB_TARGET)``: the block is the text between the markers (both, in order)."""
    settings = _block_settings(user_data)
    if settings is None:
        return False, None
    m = _TARGET_RE.fullmatch(settings.get("CAB_TARGET", ""))
    return True, (m.group(1) if m else None)


def block_source(user_data: Optional[str]) -> Optional[Tuple[str, int]]:
    """``(instance type, MiB)`` the block's limit was chosen for (its ``CAB_SOURCE``), or None."""
    m = _SOURCE_RE.fullmatch((_block_settings(user_data) or {}).get("CAB_SOURCE", ""))
    return (m.group(1), int(m.group(2))) if m else None


def block_is_mixed(user_data: Optional[str]) -> bool:
    """Whether the block says ``CAB_SOURCE=mixed``: ``auto`` for a group whose types map to different
    limits."""
    return _MIXED_RE.fullmatch((_block_settings(user_data) or {}).get("CAB_SOURCE", "")) is not None


@dataclass(frozen=True)
class ConsoleResult:
    """The block's result line found in a console log. ``old``/``new`` are None where the line says ``?``
    (the block could not read the kernel's limit, e.g. no ``auditctl``)."""

    old: Optional[int]
    new: Optional[int]
    detail: str
    line: str


_RESULT_RE = re.compile(
    r"cdk-audit-backlog: backlog_limit (?P<old>[0-9]+|\?) -> (?P<new>[0-9]+|\?)"
    r"(?: \((?P<detail>[^)\r\n]*)\))?"
)


def parse_console_result(console: Optional[str]) -> Optional[ConsoleResult]:
    """The last ``cdk-audit-backlog: backlog_limit OLD -> NEW (...)`` line of a console log, or None.

    Tolerates what serial consoles add around it (kernel and cloud-init prefixes, timestamps, CR).
    """
    if not console:
        return None
    found = None
    for line in console.splitlines():
        m = _RESULT_RE.search(line)
        if m:
            found = (m, line)
    if not found:
        return None
    m, line = found

    def num(text: str) -> Optional[int]:
        return int(text) if text.isdigit() else None

    return ConsoleResult(
        old=num(m.group("old")), new=num(m.group("new")), detail=m.group("detail") or "", line=line.strip()
    )


@dataclass(frozen=True)
class ConsoleOwner:
    """Another process owns the audit socket, as the script's console line says (``OWNER_LINE_RE`` of
    :mod:`.testing`). ``limit`` is the owner's backlog_limit, ``target`` ours; None where the line does not
    say."""

    owner: str
    pid: Optional[int]
    limit: Optional[int]
    target: Optional[str]
    line: str


def parse_console_owner(console: Optional[str]) -> Optional[ConsoleOwner]:
    """The last ``cdk-audit-backlog: owner: ...`` line of a console log naming an owner other than auditd
    (auditd is ours to tune), or None."""
    found = None
    for line in (console or "").splitlines():
        m = OWNER_LINE_RE.search(line)
        if m:
            found = (m, line)
    if not found or found[0].group("owner") in ("auditd", "none"):
        return None
    m, line = found
    return ConsoleOwner(
        owner=m.group("owner"),
        pid=int(m.group("pid")) if m.group("pid") else None,
        limit=int(m.group("limit")) if m.group("limit") else None,
        target=m.group("target"),
        line=line.strip(),
    )


def owner_verdict(owner: str, limit: Optional[int], expected: Optional[int]) -> Tuple[bool, str]:
    """``(below policy, sentence)`` for another owner that sets the limit itself."""
    if limit is None:
        return False, f"{owner} owns the audit socket and sets its own backlog_limit (value not shown)"
    head = f"{owner} owns the audit socket and sets backlog_limit {limit}"
    if expected is None:
        return False, f"{head} (the policy's limit is computed at boot: compare with plan)"
    if limit == 0:
        return False, f"{head} (no limit at all), not the policy's {expected}"
    if limit < expected:
        return True, (f"{head} < policy {expected}: set {expected} in {owner}'s own configuration "
                      "(cdk-audit-backlog plan TYPE --owners)")
    if limit == expected:
        return False, f"{head}, which agrees with the policy"
    return False, f"{head}, above the policy's {expected} (more memory at worst than the policy allows)"


@dataclass
class LaunchCheck:
    """One instance or launch template of a stack, checked.

    status: ``tuned``, ``untuned`` (no block), ``below-policy``, ``auto`` (the block computes the limit at
    boot and no console line proves it yet), ``unverified`` (the console line says ``-> ?``),
    ``not-running``, ``kept`` (no block because it already ran when the library was adopted: the aspect
    kept its user data and the SSM association tunes it; its result is the association's compliance, not
    the console). Only ``untuned`` and ``below-policy`` fail ``verify``.
    """

    resource: str
    kind: str
    instance_type: Optional[str]
    memory_mib: Optional[int]
    expected: Optional[int]
    block: bool
    target: Optional[str]
    applied: Optional[int] = None
    console_line: Optional[str] = None
    status: str = "?"
    problem: str = ""
    #: the least limit accepted when it differs from ``expected`` (see ``note``).
    floor: Optional[int] = None
    note: str = ""
    #: another owner of the audit socket (auditbeat, osqueryd, go-audit, ...) named on the console, and the
    #: backlog_limit it sets; an owner's limit below the policy makes the check ``below-policy``.
    owner: Optional[str] = None
    owner_limit: Optional[int] = None

    @property
    def failed(self) -> bool:
        return self.status in ("untuned", "below-policy")


def _classify(check: LaunchCheck) -> None:
    exp = check.floor if check.floor is not None else check.expected
    if not check.block:
        check.status, check.problem = "untuned", "user data has no cdk-audit-backlog block"
        return
    if check.target is None:
        check.status, check.problem = "untuned", "block has no CAB_TARGET line"
        return
    if check.target.isdigit() and exp is not None and int(check.target) < exp:
        check.status = "below-policy"
        check.problem = f"block target {check.target} < policy {exp} for {check.memory_mib} MiB" + (
            f"; {check.note}" if check.note else ""
        )
        return
    # 0 is no limit at all (the kernel skips the backlog check; the block keeps an image's 0): never below.
    if check.applied and exp is not None and check.applied < exp:
        check.status = "below-policy"
        check.problem = f"console shows {check.applied} applied < policy {exp}"
        return
    if check.applied == 0 and not check.note:
        check.note = "0 applied: no limit at all (kept from the image)"
    if check.target == "auto" and check.applied is None:
        check.status = "auto"
        return
    check.status = "tuned"


def _stack_resources(cfn: Any, stack: str, depth: int = 0) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack):
        for r in page.get("StackResourceSummaries", []):
            nested = r.get("ResourceType") == "AWS::CloudFormation::Stack" and r.get("PhysicalResourceId")
            if nested and depth < 5:
                out += _stack_resources(cfn, r["PhysicalResourceId"], depth + 1)
            else:
                out.append(r)
    return out


def _kept_launches(cfn: Any, stack: str) -> Set[str]:
    """Logical ids of the stack's Instances (and their launch templates) whose user data the aspect kept
    because they already ran (their ``cdk-audit-backlog`` Metadata in the deployed template says so)."""
    try:
        body = deployed_template(cfn, stack)
    except ValueError:  # not JSON (a YAML template): no Metadata of the aspect in it
        return set()
    return {
        lid
        for lid, r in ((body or {}).get("Resources") or {}).items()
        if isinstance(r, dict) and r.get("Type") in (INSTANCE, LAUNCH_TEMPLATE)
        and user_data_kept((r.get("Metadata") or {}).get(METADATA_KEY))
    }


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass(frozen=True)
class Machine:
    """One EC2 instance of a stack: its own ``AWS::EC2::Instance`` or a member of one of its Auto Scaling
    groups. ``state`` is EC2's (``running``, ...), ``gone`` when EC2 no longer lists it."""

    instance_id: str
    label: str
    group: Optional[str]
    instance_type: Optional[str]
    state: str


@dataclass(frozen=True)
class StackMachines:
    """What :func:`find_machines` found: ``machines`` by instance id, ``labels`` (instance id -> the
    logical id, ``"<group logical id> instance"`` for a group's member) and ``launch_templates``
    (physical id -> logical id)."""

    machines: Dict[str, Machine]
    labels: Dict[str, str]
    launch_templates: Dict[str, str]


def find_machines(cfn: Any, ec2: Any, asg: Any, stack: str) -> StackMachines:
    """The instances of a deployed stack (its own, its Auto Scaling groups', nested stacks') and its launch
    templates, through CloudFormation, Auto Scaling and EC2; every list call paginated. botocore's errors
    become :class:`CliError` s naming the stack (``verify`` and ``health`` share this)."""
    what = f"stack {stack}"
    resources = aws_errors(what, lambda: _stack_resources(cfn, stack))
    instance_ids: Dict[str, str] = {}  # id -> label
    groups: Dict[str, Optional[str]] = {}  # id -> the group's physical name
    asg_names: Dict[str, str] = {}  # physical name -> logical id
    lt_ids: Dict[str, str] = {}
    for r in resources:
        pid = r.get("PhysicalResourceId")
        if not pid:
            continue
        rtype = r.get("ResourceType")
        if rtype == INSTANCE:
            instance_ids[pid] = r["LogicalResourceId"]
        elif rtype == AUTO_SCALING_GROUP:
            asg_names[pid] = r["LogicalResourceId"]
        elif rtype == LAUNCH_TEMPLATE:
            lt_ids[pid] = r["LogicalResourceId"]

    def asg_instances() -> None:
        for names in _chunks(sorted(asg_names), 50):
            for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
                AutoScalingGroupNames=list(names)
            ):
                for g in page.get("AutoScalingGroups", []):
                    for i in g.get("Instances", []):
                        label = asg_names.get(g["AutoScalingGroupName"], g["AutoScalingGroupName"])
                        if i["InstanceId"] not in instance_ids:
                            instance_ids[i["InstanceId"]] = f"{label} instance"
                            groups[i["InstanceId"]] = g["AutoScalingGroupName"]

    aws_errors(what, asg_instances)

    types: Dict[str, Tuple[Optional[str], str]] = {}

    def describe() -> None:
        ids = sorted(instance_ids)
        for chunk in _chunks(ids, 200):
            # A filter, not InstanceIds: an id terminated since the listing must not fail the whole chunk.
            filters = [{"Name": "instance-id", "Values": list(chunk)}]
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for res in page.get("Reservations", []):
                    for inst in res.get("Instances", []):
                        types[inst["InstanceId"]] = (
                            inst.get("InstanceType"),
                            inst.get("State", {}).get("Name", "?"),
                        )

    aws_errors(what, describe)
    machines = {
        iid: Machine(iid, label, groups.get(iid), *types.get(iid, (None, "gone")))
        for iid, label in instance_ids.items()
    }
    return StackMachines(machines, instance_ids, lt_ids)


def check_stack(
    stack: str,
    *,
    session: Any = None,
    region: Optional[str] = None,
    policy: Optional[BacklogPolicy] = None,
    max_workers: int = 8,
    console: bool = True,
    launch_templates: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[LaunchCheck]:
    """Check every instance (and launch template) of a deployed stack; see ``LaunchCheck`` for statuses.

    CloudFormation gives the stack's instances, ASGs and launch templates (nested stacks included);
    Auto Scaling gives the ASGs' instances; EC2 gives types, stored user data and console output. Every
    list call is paginated; per-instance calls run with at most ``max_workers`` in flight.
    """
    policy = policy or BacklogPolicy()
    boto3 = boto3_module()
    session = session or boto3.session.Session(region_name=region)
    config = client_config()
    kw = {"region_name": region} if region else {}
    what = f"stack {stack}"
    cfn, ec2, asg = aws_errors(
        what,
        lambda: [session.client(s, config=config, **kw) for s in ("cloudformation", "ec2", "autoscaling")],
    )

    found = find_machines(cfn, ec2, asg, stack)
    kept = aws_errors(what, lambda: _kept_launches(cfn, stack))
    instance_ids, lt_ids = found.labels, found.launch_templates
    types = {iid: (m.instance_type, m.state) for iid, m in found.machines.items()}

    def expected_for(itype: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
        mib = instance_memory.memory_mib(itype) if itype else None
        return mib, (policy.limit_for_memory(mib) if mib is not None else None)

    def check_instance(iid: str) -> LaunchCheck:
        itype, state = types.get(iid, (None, "gone"))
        mib, exp = expected_for(itype)
        label = f"{iid} ({instance_ids[iid]})"
        gone = LaunchCheck(
            label, "instance", itype, mib, exp, block=False, target=None, status="not-running", problem=state
        )
        if state in ("gone", "terminated", "shutting-down"):
            return gone
        try:
            attr = aws_errors(
                f"instance {iid}",
                lambda: ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData"),
            )
        except NotFound:
            return gone
        text = decode_stored_user_data(attr.get("UserData", {}).get("Value"))
        block, target = block_target(text)
        c = LaunchCheck(label, "instance", itype, mib, exp, block, target)
        source = block_source(text)
        if source and mib is not None and source[0] != itype and source[1] < mib:
            # A fixed limit chosen for a smaller type of a mixed group (what the aspect wrote before it
            # sized such groups per machine): held to this machine's own policy like any other, and said.
            c.note = (
                f"chosen for {source[0]} ({source[1]} MiB), a smaller type of its group; synthesize again: "
                "its types now get auto"
            )
        if target == "auto" and mib is not None:
            # Computed at boot from MemTotal, which is below the nominal memory by the kernel's reservations.
            c.floor = policy.limit_for_memory(mib * 9 // 10)
            if block_is_mixed(text):
                c.note = "a mixed group: sized at boot from MemTotal"
        other: Optional[ConsoleOwner] = None
        if console and state == "running":
            try:
                out = aws_errors(f"instance {iid}", lambda: ec2.get_console_output(InstanceId=iid))
            except NotFound:
                out = {}
            raw = out.get("Output")
            log = None
            if raw:
                try:
                    log = base64.b64decode(raw).decode("utf-8", errors="replace")
                except (binascii.Error, ValueError):
                    log = raw
            res = parse_console_result(log)
            if res:
                c.applied, c.console_line = res.new, res.line
            other = parse_console_owner(log)
            if other:
                c.owner, c.owner_limit = other.owner, other.limit
        _classify(c)
        if c.owner and not c.failed:
            below, said = owner_verdict(
                c.owner + (f" (pid {other.pid})" if other and other.pid else ""), c.owner_limit,
                c.floor if c.floor is not None else c.expected,
            )
            if below:
                c.status, c.problem = "below-policy", said
            else:
                c.note = f"{c.note}; {said}" if c.note else said
        if c.status == "untuned" and instance_ids[iid] in kept:
            c.status, c.problem = "kept", ""
            c.note = "user data kept (it ran before the library was adopted); the SSM association tunes it"
        if c.console_line and c.applied is None and not c.failed:
            c.status = "unverified"
            c.problem = "the block could not read the kernel's limit (auditctl missing?)"
        if state not in ("running", "pending") and not c.failed:
            c.status = "not-running"
        return c

    def check_lt(lt_id: str) -> LaunchCheck:
        resp = aws_errors(
            f"launch template {lt_id}",
            lambda: ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"]),
        )
        versions = resp.get("LaunchTemplateVersions", [])
        data = versions[0].get("LaunchTemplateData", {}) if versions else {}
        itype = data.get("InstanceType")
        mib, exp = expected_for(itype)
        block, target = block_target(decode_stored_user_data(data.get("UserData")))
        c = LaunchCheck(f"{lt_id} ({lt_ids[lt_id]})", "launch-template", itype, mib, exp, block, target)
        _classify(c)
        if c.status == "untuned" and lt_ids[lt_id] in kept:
            c.status, c.problem = "kept", ""
            c.note = "user data kept: a running instance launches from it (a new version would replace it)"
        if c.status == "tuned" and target == "auto":
            c.status = "auto"
        return c

    jobs: List[Callable[[], LaunchCheck]] = [
        lambda i=i: check_lt(i) for i in (lt_ids if launch_templates else [])
    ]
    jobs += [lambda i=i: check_instance(i) for i in sorted(instance_ids)]
    total = len(jobs)
    done = [0]
    lock = threading.Lock()

    def run(job: Callable[[], LaunchCheck]) -> LaunchCheck:
        r = job()
        with lock:
            done[0] += 1
            if progress:
                progress(done[0], total)
        return r

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(run, jobs))

