"""Operator CLI: ``cdk-audit-backlog`` / ``python -m cdk_audit_backlog``.

Sub-commands (``--help`` on each for the options):

``plan TYPE... | --all``
    the limit the policy gives each instance type (memory, limit, worst case, share of memory).
``refresh-types``
    regenerates the bundled instance-memory table from EC2 ``DescribeInstanceTypes``.
``verify --stack NAME``
    checks that every instance of a deployed stack booted with the block and the expected limit.
``report CDK_OUT_DIR``
    what the aspect chose for every launch resource of a synthesized cloud assembly (``make synth``).

Exit status: 0 fine, 1 a check failed (untuned or below policy, unknown type in ``plan``), 2 usage or
AWS errors (no credentials, unknown stack, throttled after retries).

boto3 is needed only by ``refresh-types`` and ``verify`` (``pip install 'cdk-audit-backlog[cli]'``);
it is imported lazily so ``plan`` and ``report`` work without it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import datetime
import email
import gzip
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO, Tuple

from . import instance_memory
from .policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy

__all__ = [
    "main",
    "CliError",
    "PlanRow",
    "plan_rows",
    "fetch_instance_memory",
    "refresh_types",
    "decode_stored_user_data",
    "block_target",
    "block_source",
    "parse_console_result",
    "ConsoleResult",
    "LaunchCheck",
    "check_stack",
    "report_assembly",
]

BLOCK_BEGIN = "# >>> cdk-audit-backlog >>>"
BLOCK_END = "# <<< cdk-audit-backlog <<<"
METADATA_KEY = "cdk-audit-backlog"
DEFAULT_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
)
_MIB = 1024 * 1024
#: Attempts per AWS call (botocore's standard retry mode: exponential backoff with jitter on throttling).
MAX_ATTEMPTS = 10


class CliError(Exception):
    """An error the CLI reports in one line and exits 2 for."""


class _NotFound(CliError):
    """AWS says the resource is gone (``InvalidInstanceID.NotFound`` and the like)."""


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanRow:
    """One row of ``plan``. ``memory_mib``/``limit`` are None for an unknown type."""

    type: str
    memory_mib: Optional[int]
    limit: Optional[int]
    worst_case_mib: Optional[float]
    percent_of_memory: Optional[float]


_MEMORY_ARG_RE = re.compile(r"^([0-9]+)(MiB|GiB)$")


def plan_rows(names: Iterable[str], policy: BacklogPolicy) -> List[PlanRow]:
    """Rows for instance type names; ``4096MiB`` / ``16GiB`` plan for a bare memory size."""
    rows = []
    for name in names:
        m = _MEMORY_ARG_RE.match(name)
        if m:
            mib: Optional[int] = int(m.group(1)) * (1024 if m.group(2) == "GiB" else 1)
        else:
            mib = instance_memory.memory_mib(name)
        if mib is None:
            rows.append(PlanRow(name, None, None, None, None))
            continue
        limit = policy.limit_for_memory(mib)
        worst = policy.worst_case_bytes(limit)
        rows.append(
            PlanRow(
                type=name,
                memory_mib=mib,
                limit=limit,
                worst_case_mib=round(worst / _MIB, 1),
                percent_of_memory=round(100 * worst / (mib * _MIB), 3) if mib else None,
            )
        )
    return rows


_PLAN_HEADERS = ("type", "memory_mib", "limit", "worst_case_mib", "percent_of_memory")


def _plan_cells(row: PlanRow) -> List[str]:
    if row.memory_mib is None:
        return [row.type, "unknown", "auto", "-", "-"]
    pct = "-" if row.percent_of_memory is None else f"{row.percent_of_memory:.2f}"
    return [row.type, str(row.memory_mib), str(row.limit), f"{row.worst_case_mib:.1f}", pct]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def is_num(text: str) -> bool:
        return bool(re.match(r"^-?[0-9.]+$", text))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if is_num(c) else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]) + "\n"


def _cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    policy = _policy_from_args(args)
    if args.all and args.types:
        raise CliError("plan: give instance types or --all, not both")
    if not args.all and not args.types:
        raise CliError("plan: give at least one instance type (e.g. m5.large), a size (16GiB), or --all")
    names = sorted(instance_memory.all_types(), key=_type_sort_key) if args.all else args.types
    rows = plan_rows(names, policy)
    if args.format == "json":
        json.dump([asdict(r) for r in rows], out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(_PLAN_HEADERS)
        for r in rows:
            w.writerow(["" if v is None else v for v in asdict(r).values()])
    else:
        out.write(format_table(_PLAN_HEADERS, [_plan_cells(r) for r in rows]))
    unknown = [r.type for r in rows if r.memory_mib is None]
    if unknown:
        print(
            f"plan: unknown instance type(s): {', '.join(unknown)} (the block would compute the limit at "
            "boot from MemTotal)",
            file=sys.stderr,
        )
        return 1
    return 0


def _type_sort_key(name: str) -> Tuple[str, int, str]:
    family, _, size = name.partition(".")
    m = re.match(r"^([0-9]*)xlarge$", size)
    order = {"nano": 0, "micro": 1, "small": 2, "medium": 3, "large": 4}
    if size in order:
        rank = order[size]
    elif m:
        rank = 10 + int(m.group(1) or 1)
    else:
        rank = 10_000
    return (family, rank, size)


def _policy_from_args(args: argparse.Namespace) -> BacklogPolicy:
    try:
        return BacklogPolicy(memory_fraction=args.memory_fraction, minimum=args.minimum, maximum=args.maximum)
    except ValueError as e:
        raise CliError(str(e)) from None


# ------------------------------------------------------------------------------------- AWS plumbing


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 is in the dev requirements
        raise CliError("this command needs boto3: pip install 'cdk-audit-backlog[cli]'") from None
    return boto3


def _client_config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, max_pool_connections=32)


def _aws_errors(what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and turn botocore's errors into one-line CliErrors."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        return fn()
    except (NoCredentialsError, PartialCredentialsError):
        raise CliError(
            f"{what}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run where an instance role is available)"
        ) from None
    except NoRegionError:
        raise CliError(f"{what}: no region: pass --region or set AWS_REGION") from None
    except EndpointConnectionError as e:
        raise CliError(f"{what}: cannot reach {e.kwargs.get('endpoint_url', 'the endpoint')}") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "")
        msg = err.get("Message", "")
        if code in {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}:
            raise CliError(
                f"{what}: AWS kept throttling ({code}) after botocore's retries with backoff; "
                "retry later or lower --max-workers"
            ) from None
        if code == "ValidationError" and "does not exist" in msg:
            raise CliError(f"{what}: {msg}") from None
        if code.endswith(".NotFound"):
            raise _NotFound(f"{what}: {code}: {msg}") from None
        if code in {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                    "ExpiredTokenException"}:
            raise CliError(f"{what}: the AWS credentials were rejected ({code}: {msg})") from None
        raise CliError(f"{what}: {code}: {msg}") from None


# ----------------------------------------------------------------------------------- refresh-types


def fetch_instance_memory(
    session: Any, regions: Sequence[str], *, max_workers: int = 4
) -> Tuple[Dict[str, int], List[str]]:
    """Every type -> MemoryInfo.SizeInMiB from ``DescribeInstanceTypes`` in ``regions`` (paginated), merged.

    Returns ``(entries, conflicts)``; a type whose memory differs between regions keeps the first
    region's figure (in ``regions`` order) and is listed in ``conflicts``.
    """
    if not regions:
        raise CliError("refresh-types: no regions")
    config = _client_config()
    # Clients are made here, not in the workers: creating clients from one Session is not thread-safe.
    clients = {r: session.client("ec2", region_name=r, config=config) for r in regions}

    def one(region: str) -> Dict[str, int]:
        client = clients[region]
        found: Dict[str, int] = {}
        for page in client.get_paginator("describe_instance_types").paginate(
            PaginationConfig={"PageSize": 100}
        ):
            for it in page.get("InstanceTypes", []):
                mib = it.get("MemoryInfo", {}).get("SizeInMiB")
                if isinstance(mib, int) and mib > 0:
                    found[it["InstanceType"]] = mib
        return found

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(regions)))) as pool:
        per_region = list(
            pool.map(lambda r: _aws_errors(f"DescribeInstanceTypes in {r}", lambda: one(r)), regions)
        )
    merged: Dict[str, int] = {}
    conflicts: List[str] = []
    for region, found in zip(regions, per_region):
        for name, mib in found.items():
            if name in merged and merged[name] != mib:
                conflicts.append(f"{name}: {merged[name]} MiB vs {mib} MiB in {region}")
            merged.setdefault(name, mib)
    return merged, conflicts


def enabled_regions(session: Any, region: str = "us-east-1") -> List[str]:
    """The regions enabled for the account (``DescribeRegions`` asked in ``region``), sorted."""
    client = session.client("ec2", region_name=region, config=_client_config())
    resp = _aws_errors("DescribeRegions", lambda: client.describe_regions(AllRegions=False))
    return sorted(r["RegionName"] for r in resp.get("Regions", []))


def default_data_path() -> Path:
    """The bundled generated data file (in a source checkout: the committed file)."""
    return Path(instance_memory.__file__).resolve().parent / "data" / instance_memory.DATA_FILE


def describe_source(regions: Sequence[str], note: Optional[str]) -> str:
    text = f"ec2:DescribeInstanceTypes MemoryInfo.SizeInMiB, regions {','.join(regions)} merged"
    return f"{text}; {note}" if note else text


@dataclass
class RefreshResult:
    path: Path
    count: int
    added: List[str]
    removed: List[str]
    changed: List[str]
    conflicts: List[str]


def refresh_types(
    *,
    regions: Sequence[str],
    output: Path,
    date: Optional[str] = None,
    note: Optional[str] = None,
    session: Any = None,
    max_workers: int = 4,
) -> RefreshResult:
    """Regenerate the data file at ``output`` from the EC2 API; returns what changed against the old file."""
    if session is None:
        session = _boto3().session.Session()
    entries, conflicts = fetch_instance_memory(session, regions, max_workers=max_workers)
    if not entries:
        raise CliError("refresh-types: DescribeInstanceTypes returned no instance types; file left unchanged")
    old: Mapping[str, int] = {}
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    try:
        if output.exists():
            previous = output.read_text(encoding="utf-8")
            old = instance_memory.parse_data_file(previous, name=str(output)).entries
        text = instance_memory.render_data_file(entries, source=describe_source(regions, note), date=date)
    except ValueError as e:
        raise CliError(f"refresh-types: {e}; file left unchanged") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    return RefreshResult(
        path=output,
        count=len(entries),
        added=sorted(set(entries) - set(old), key=_type_sort_key),
        removed=sorted(set(old) - set(entries), key=_type_sort_key),
        changed=sorted(
            (f"{t}: {old[t]} -> {entries[t]} MiB" for t in set(old) & set(entries) if old[t] != entries[t]),
        ),
        conflicts=conflicts,
    )


def _cmd_refresh(args: argparse.Namespace, out: TextIO) -> int:
    if args.all_regions and args.region:
        raise CliError("refresh-types: give --region or --all-regions, not both")
    regions = args.region or list(DEFAULT_REGIONS)
    if args.all_regions:
        regions = enabled_regions(_boto3().session.Session())
    output = Path(args.output) if args.output else default_data_path()
    res = refresh_types(
        regions=regions, output=output, date=args.date, note=args.note, max_workers=args.max_workers
    )
    out.write(f"wrote {res.count} instance types from {len(regions)} region(s) to {res.path}\n")
    for label, items in (("added", res.added), ("removed", res.removed), ("changed", res.changed)):
        out.write(f"{label} {len(items)}{': ' + ', '.join(items) if items else ''}\n")
    for c in res.conflicts:
        print(f"refresh-types: regions disagree on {c} (kept the first)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------- user data decoding


def decode_stored_user_data(value: Optional[str]) -> Optional[str]:
    """Text of user data as EC2 returns it (base64; possibly gzip; possibly MIME multipart).

    For MIME, the text parts are joined in order, so a block inside any part is found. None for none.
    Written independently of the code that produces the block (see STYLE.md: the checker must not share
    code with the producer).
    """
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raw = value.encode()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().lower().startswith(("content-type: multipart", "mime-version:")):
        msg = email.message_from_string(text)
        if msg.is_multipart():
            parts = []
            for part in msg.walk():
                if part.is_multipart():
                    continue
                payload = part.get_payload(decode=True)
                if payload is None:
                    continue
                if payload[:2] == b"\x1f\x8b":
                    payload = gzip.decompress(payload)
                parts.append(payload.decode("utf-8", errors="replace"))
            return "\n".join(parts)
    return text


_TARGET_RE = re.compile(r"^CAB_TARGET=['\"]?([0-9]+|auto)['\"]?\s*$", re.M)


def block_target(user_data: Optional[str]) -> Tuple[bool, Optional[str]]:
    """``(block present, CAB_TARGET)``: the block is the text between the markers (both, in order)."""
    if not user_data:
        return False, None
    begin = user_data.find(BLOCK_BEGIN)
    end = user_data.find(BLOCK_END, begin + 1) if begin >= 0 else -1
    if begin < 0 or end < 0:
        return False, None
    m = _TARGET_RE.search(user_data, begin, end)
    return True, (m.group(1) if m else None)


_SOURCE_RE = re.compile(r"^CAB_SOURCE=['\"]?([a-z0-9][a-z0-9.-]*)/([0-9]+)MiB['\"]?\s*$", re.M)


def block_source(user_data: Optional[str]) -> Optional[Tuple[str, int]]:
    """``(instance type, MiB)`` the block's limit was chosen for (its ``CAB_SOURCE``), or None."""
    if not user_data:
        return None
    begin = user_data.find(BLOCK_BEGIN)
    end = user_data.find(BLOCK_END, begin + 1) if begin >= 0 else -1
    m = _SOURCE_RE.search(user_data, begin, end) if begin >= 0 and end >= 0 else None
    return (m.group(1), int(m.group(2))) if m else None


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


# ------------------------------------------------------------------------------------------ verify


@dataclass
class LaunchCheck:
    """One instance or launch template of a stack, checked.

    status: ``tuned``, ``untuned`` (no block), ``below-policy``, ``auto`` (the block computes the limit at
    boot and no console line proves it yet), ``unverified`` (the console line says ``-> ?``),
    ``not-running``. Only ``untuned`` and ``below-policy`` fail ``verify``.
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
        check.problem = f"block target {check.target} < policy {exp} for {check.memory_mib} MiB"
        return
    if check.applied is not None and exp is not None and check.applied < exp:
        check.status = "below-policy"
        check.problem = f"console shows {check.applied} applied < policy {exp}"
        return
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


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


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
    boto3 = _boto3()
    session = session or boto3.session.Session(region_name=region)
    config = _client_config()
    kw = {"region_name": region} if region else {}
    what = f"stack {stack}"
    cfn, ec2, asg = _aws_errors(
        what, lambda: [session.client(s, config=config, **kw) for s in ("cloudformation", "ec2", "autoscaling")]
    )

    resources = _aws_errors(what, lambda: _stack_resources(cfn, stack))
    instance_ids: Dict[str, str] = {}  # id -> label
    asg_names: Dict[str, str] = {}  # physical name -> logical id
    lt_ids: Dict[str, str] = {}
    for r in resources:
        pid = r.get("PhysicalResourceId")
        if not pid:
            continue
        rtype = r.get("ResourceType")
        if rtype == "AWS::EC2::Instance":
            instance_ids[pid] = r["LogicalResourceId"]
        elif rtype == "AWS::AutoScaling::AutoScalingGroup":
            asg_names[pid] = r["LogicalResourceId"]
        elif rtype == "AWS::EC2::LaunchTemplate":
            lt_ids[pid] = r["LogicalResourceId"]

    def asg_instances() -> None:
        for names in _chunks(sorted(asg_names), 50):
            for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
                AutoScalingGroupNames=list(names)
            ):
                for g in page.get("AutoScalingGroups", []):
                    for i in g.get("Instances", []):
                        label = asg_names.get(g["AutoScalingGroupName"], g["AutoScalingGroupName"])
                        instance_ids.setdefault(i["InstanceId"], f"{label} instance")

    _aws_errors(what, asg_instances)

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

    _aws_errors(what, describe)

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
            attr = _aws_errors(
                f"instance {iid}",
                lambda: ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData"),
            )
        except _NotFound:
            return gone
        text = decode_stored_user_data(attr.get("UserData", {}).get("Value"))
        block, target = block_target(text)
        c = LaunchCheck(label, "instance", itype, mib, exp, block, target)
        source = block_source(text)
        if source and mib is not None and source[0] != itype and source[1] < mib:
            # A mixed-instances group: the aspect sizes for the smallest type, so the worst case fits it.
            c.floor = policy.limit_for_memory(source[1])
            c.note = f"chosen for {source[0]} ({source[1]} MiB), the smallest type of its group"
        elif target == "auto" and mib is not None:
            # Computed at boot from MemTotal, which is below the nominal memory by the kernel's reservations.
            c.floor = policy.limit_for_memory(mib * 9 // 10)
        if console and state == "running":
            try:
                out = _aws_errors(f"instance {iid}", lambda: ec2.get_console_output(InstanceId=iid))
            except _NotFound:
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
        _classify(c)
        if c.console_line and c.applied is None and not c.failed:
            c.status = "unverified"
            c.problem = "the block could not read the kernel's limit (auditctl missing?)"
        if state not in ("running", "pending") and not c.failed:
            c.status = "not-running"
        return c

    def check_lt(lt_id: str) -> LaunchCheck:
        resp = _aws_errors(
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


_CHECK_HEADERS = ("resource", "type", "memory_mib", "policy", "block", "target", "applied", "status")


def _check_cells(c: LaunchCheck) -> List[str]:
    return [
        c.resource,
        c.instance_type or "-",
        "unknown" if c.memory_mib is None else str(c.memory_mib),
        "auto" if c.expected is None else str(c.expected),
        "yes" if c.block else "NO",
        c.target or "-",
        "-" if c.applied is None else str(c.applied),
        c.status + (f" ({c.problem or c.note})" if c.problem or c.note else ""),
    ]


def _progress_printer(stream: TextIO, threshold: int = 20) -> Callable[[int, int], None]:
    last = [-1]

    def show(done: int, total: int) -> None:
        if total < threshold:
            return
        step = max(1, total // 20)
        if done == total or done // step != last[0]:
            last[0] = done // step
            stream.write(f"\rverify: {done}/{total} checked")
            if done == total:
                stream.write("\n")
            stream.flush()

    return show


def _cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    policy = _policy_from_args(args)
    checks = check_stack(
        args.stack,
        region=args.region,
        policy=policy,
        max_workers=args.max_workers,
        console=not args.no_console,
        progress=_progress_printer(sys.stderr),
    )
    if not checks:
        out.write(f"stack {args.stack}: no instances or launch templates\n")
        return 0
    if args.format == "json":
        json.dump([dict(asdict(c), failed=c.failed) for c in checks], out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(_CHECK_HEADERS, [_check_cells(c) for c in checks]))
    failed = [c for c in checks if c.failed]
    print(
        f"verify: {len(checks)} checked, {len(failed)} untuned or below policy",
        file=sys.stderr,
    )
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------ report


@dataclass
class ReportRow:
    """One launch resource of a synthesized template.

    ``limit`` is the Metadata's limit (``8192``, ``auto``), ``skipped``, or ``-`` when the aspect never saw
    the resource; ``blocks`` is how many blocks its decoded user data carries (None: an ASG, whose launch
    template or configuration carries them).
    """

    template: str
    logical_id: str
    resource_type: str
    limit: str
    instance_type: Optional[str]
    memory_mib: Optional[int]
    blocks: Optional[int]
    reason: str


def report_assembly(cdk_out: Path) -> List[ReportRow]:
    """Rows for every launch resource of every template in a cloud assembly (nested assemblies too).

    User data is decoded by :mod:`cdk_audit_backlog.testing` (the reader that shares no code with the
    writer); the choice is read from the ``cdk-audit-backlog`` Metadata the aspect writes.
    """
    from . import testing

    if not cdk_out.is_dir():
        raise CliError(f"report: {cdk_out} is not a directory (run cdk synth first)")
    templates = sorted(cdk_out.rglob("*.template.json"))
    if not templates:
        raise CliError(f"report: no *.template.json under {cdk_out}")
    rows: List[ReportRow] = []
    for path in templates:
        name = str(path.relative_to(cdk_out))
        try:
            template = json.loads(path.read_text(encoding="utf-8"))
            found = {l.logical_id: l for l in testing.launches(template)}
        except ValueError as e:  # bad JSON, or testing.MalformedBlock
            raise CliError(f"report: {name}: {e}") from None
        for logical_id, res in (template.get("Resources") or {}).items():
            meta = (res.get("Metadata") or {}).get(METADATA_KEY)
            launch = found.get(logical_id)
            if launch is None and meta is None:
                continue
            blocks = None
            if launch is not None:
                blocks = launch.tuning.count if launch.tuning else 0
            row = ReportRow(name, logical_id, res.get("Type", "?"), "-", None, None, blocks,
                            "no cdk-audit-backlog metadata")
            if isinstance(meta, dict) and "skipped" in meta:
                row.limit, row.reason = "skipped", str(meta["skipped"])
            elif isinstance(meta, dict):
                row.limit = str(meta.get("limit"))
                row.instance_type = meta.get("instanceType")
                row.memory_mib = meta.get("memoryMiB")
                row.reason = str(meta.get("reason", ""))
            rows.append(row)
    return rows


def _cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    rows = report_assembly(Path(args.cdk_out))
    if args.format == "json":
        json.dump([asdict(r) for r in rows], out, indent=2)
        out.write("\n")
    else:
        headers = ("template", "resource", "type", "limit", "instance_type", "memory_mib", "block", "reason")
        cells = [
            [
                r.template,
                r.logical_id,
                r.resource_type.split("::")[-1],
                r.limit,
                r.instance_type or "-",
                "-" if r.memory_mib is None else str(r.memory_mib),
                "-" if r.blocks is None else {0: "NO", 1: "yes"}.get(r.blocks, f"{r.blocks} blocks!"),
                r.reason,
            ]
            for r in rows
        ]
        out.write(format_table(headers, cells))
    untuned = [r for r in rows if r.blocks == 0]
    doubled = [r for r in rows if r.blocks is not None and r.blocks > 1]
    if untuned:
        print(f"report: {len(untuned)} launch resource(s) without the block", file=sys.stderr)
    if doubled:
        print(f"report: {len(doubled)} launch resource(s) carry the block more than once", file=sys.stderr)
    return 1 if args.strict and (untuned or doubled) else 0


# -------------------------------------------------------------------------------------------- main


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    d = BacklogPolicy()
    p.add_argument("--memory-fraction", type=float, default=d.memory_fraction,
                   help=f"share of memory a full queue may take (default {d.memory_fraction})")
    p.add_argument("--minimum", type=int, default=d.minimum, help=f"smallest limit (default {d.minimum})")
    p.add_argument("--maximum", type=int, default=d.maximum, help=f"largest limit (default {d.maximum})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdk-audit-backlog",
        description="Plan, refresh and verify audit backlog limits (auditctl -b) chosen from EC2 instance "
        "memory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "plan",
        help="the limit per instance type under a policy",
        description="Limit = largest power of two whose worst case (limit x "
        f"{MAX_AUDIT_MESSAGE_LENGTH} bytes) fits in the memory fraction, clamped to [minimum, maximum].",
    )
    p.add_argument(
        "types", nargs="*", metavar="TYPE", help="instance types (m5.large) or sizes (4096MiB, 16GiB)"
    )
    p.add_argument("--all", action="store_true", help="every type in the bundled table")
    _add_policy_args(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("refresh-types", help="regenerate the bundled instance-memory table from the EC2 API")
    p.add_argument("--region", action="append", metavar="REGION",
                   help=f"region to query, repeatable (default: {' '.join(DEFAULT_REGIONS)})")
    p.add_argument("--all-regions", action="store_true", help="every region enabled for the account")
    p.add_argument("--output", metavar="FILE", help="file to write (default: the package's data file)")
    p.add_argument("--date", help="date to record in the header (default: today, UTC)")
    p.add_argument("--note", help="free text appended to the header's source line")
    p.add_argument("--max-workers", type=int, default=4, help="regions queried at once (default 4)")
    p.set_defaults(func=_cmd_refresh)

    p = sub.add_parser("verify", help="check the instances of a deployed stack booted tuned")
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name or id")
    p.add_argument("--region", help="AWS region (default: the environment's)")
    p.add_argument("--max-workers", type=int, default=8, help="instances checked at once (default 8)")
    p.add_argument("--no-console", action="store_true", help="do not read console output")
    p.add_argument("--format", choices=("table", "json"), default="table")
    _add_policy_args(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("report", help="the limit chosen per launch resource of a synthesized cloud assembly")
    p.add_argument("cdk_out", metavar="CDK_OUT_DIR")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a launch resource lacks the block or has it twice"
    )
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, out or sys.stdout))
    except CliError as e:
        print(f"cdk-audit-backlog: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - `| head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
