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
``health --stack NAME``
    lost events, peak backlog against the limit, use %, the audit socket's owner and drift per machine of a
    deployed stack, from the sampler's CloudWatch metrics; ``--recommend`` sizes each limit from them.
``impact [CDK_OUT_DIR]``
    what the next ``cdk deploy`` of the assembly does to each deployed launch resource and its machines;
    ``--record`` writes the running Instances into ``cdk.context.json`` so their user data is kept.

Exit status: 0 fine, 1 a check failed (untuned or below policy, unknown type in ``plan``, a running
machine the deploy would interrupt in ``impact``, lost events in ``health``), 2 usage or
AWS errors (no credentials, unknown stack, throttled after retries).

boto3 is needed only by ``refresh-types``, ``verify``, ``health`` and ``impact``
(``pip install 'cdk-audit-backlog[cli]'``);
it is imported lazily so ``plan`` and ``report`` work without it.

The logic of each command lives in its own module (``plan``, ``refresh``, ``verify``, ``report``,
``impact``); this
module parses arguments and prints. The public names below are re-exported for scripts and tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, TextIO

from . import instance_memory
from .aws_api import boto3_module
from .errors import CliError
from .plan import OWNER_SETTINGS, PlanRow, owner_settings, plan_rows, type_sort_key
from .policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy
from .refresh import (
    DEFAULT_REGIONS,
    RefreshResult,
    default_data_path,
    describe_source,
    enabled_regions,
    fetch_instance_memory,
    refresh_types,
)
from .report import ReportRow, report_assembly
from .verify import (
    ConsoleResult,
    LaunchCheck,
    block_source,
    block_target,
    check_stack,
    decode_stored_user_data,
    parse_console_result,
)
if TYPE_CHECKING:  # pragma: no cover
    from . import health

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
    "ReportRow",
    "RefreshResult",
    "describe_source",
    "format_table",
]


# ---------------------------------------------------------------------------------------------- plan


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
    names = sorted(instance_memory.all_types(), key=type_sort_key) if args.all else args.types
    rows = plan_rows(names, policy)
    owners = list(OWNER_SETTINGS) if args.owners else []

    def settings(r: PlanRow) -> Dict[str, Optional[str]]:
        known = owner_settings(r.limit) if r.limit is not None else {}
        return {o: known.get(o) for o in owners}

    if args.format == "json":
        json.dump([dict(asdict(r), **({"owner_settings": settings(r)} if owners else {})) for r in rows],
                  out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(list(_PLAN_HEADERS) + owners)
        for r in rows:
            extra = [settings(r)[o] or "" for o in owners]
            w.writerow(["" if v is None else v for v in asdict(r).values()] + extra)
    else:
        out.write(format_table(_PLAN_HEADERS, [_plan_cells(r) for r in rows]))
        if owners:
            out.write("\nanother owner of the audit socket sets the limit itself; give it the same value:\n")
            for r in rows:
                if r.limit is None:
                    out.write(f"  {r.type}: auto (computed at boot): read the machine's limit (verify, "
                              "health)\n")
                    continue
                out.write(f"  {r.type} ({r.limit}):\n")
                for owner, setting in settings(r).items():
                    out.write(f"    {owner:<9}  {setting:<30}  ({OWNER_SETTINGS[owner][0]})\n")
    unknown = [r.type for r in rows if r.memory_mib is None]
    if unknown:
        print(
            f"plan: unknown instance type(s): {', '.join(unknown)} (the block would compute the limit at "
            "boot from MemTotal)",
            file=sys.stderr,
        )
        return 1
    return 0



def _policy_from_args(args: argparse.Namespace) -> BacklogPolicy:
    try:
        return BacklogPolicy(memory_fraction=args.memory_fraction, minimum=args.minimum, maximum=args.maximum)
    except ValueError as e:
        # The policy names its option (memory_fraction, minimum, maximum); say which argument that is.
        option = str(e).split(" ", 1)[0]
        flags = {"memory_fraction": "--memory-fraction", "minimum": "--minimum", "maximum": "--maximum"}
        flag = flags.get(option)
        raise CliError(f"{flag}: {e}" if flag else str(e)) from None


#: Most threads ``--max-workers`` may ask for (AWS throttles long before this many calls in flight).
MAX_WORKERS = 64


def _workers(text: str) -> int:
    """argparse type of ``--max-workers``: an integer from 1 to MAX_WORKERS."""
    value = int(text) if re.fullmatch(r"[0-9]{1,6}", text.strip()) else 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_WORKERS}, got {text!r}")
    return value



# ----------------------------------------------------------------------------------- refresh-types


def _cmd_refresh(args: argparse.Namespace, out: TextIO) -> int:
    if args.all_regions and args.region:
        raise CliError("refresh-types: give --region or --all-regions, not both")
    regions = args.region or list(DEFAULT_REGIONS)
    if args.all_regions:
        regions = enabled_regions(boto3_module().session.Session())
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



# ------------------------------------------------------------------------------------------ verify


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
                r.limit_shown,
                r.instance_type or "-",
                "-" if r.memory_mib is None else str(r.memory_mib),
                "-" if r.blocks is None else {0: "NO", 1: "yes"}.get(r.blocks, f"{r.blocks} blocks!"),
                r.reason,
            ]
            for r in rows
        ]
        out.write(format_table(headers, cells))
    untuned = [r for r in rows if r.blocks == 0 and not r.kept]
    kept = [r for r in rows if r.blocks == 0 and r.kept]
    if kept:
        print(f"report: {len(kept)} running instance(s) keep their user data (recorded as deployed)",
              file=sys.stderr)
    doubled = [r for r in rows if r.blocks is not None and r.blocks > 1]
    owned = [r for r in rows if r.owners]
    if owned:
        print(f"report: {len(owned)} launch resource(s) configure another owner of the audit socket, which "
              "sets its own backlog_limit (see the reason)", file=sys.stderr)
    if untuned:
        print(f"report: {len(untuned)} launch resource(s) without the block", file=sys.stderr)
    if doubled:
        print(f"report: {len(doubled)} launch resource(s) carry the block more than once", file=sys.stderr)
    return 1 if args.strict and (untuned or doubled) else 0


# ------------------------------------------------------------------------------------------ impact


def _cmd_impact(args: argparse.Namespace, out: TextIO) -> int:
    from . import impact

    results = impact.stack_impacts(Path(args.cdk_out), stacks=args.stack or (), region=args.region)
    rows = [i for r in results for i in r.impacts]
    if args.format == "json":
        json.dump([asdict(i) for i in rows], out, indent=2)
        out.write("\n")
    else:
        headers = ("stack", "resource", "type", "change", "interrupts", "effect on machines")
        cells = [
            [i.stack, i.logical_id, i.resource_type.split("::")[-1], i.change,
             "YES" if i.interrupts else "no", i.effect]
            for i in rows
        ]
        out.write(format_table(headers, cells))
    for r in results:
        if r.deployed is None:
            where = f"{r.account}/{r.region}"
            print(f"impact: stack {r.stack.stack_name} is not deployed in {where}", file=sys.stderr)
    interrupting = [i for i in rows if i.interrupts]
    summary = f"impact: {len(rows)} resource(s), {len(interrupting)} interrupting running machines"
    print(summary, file=sys.stderr)
    if args.record:
        written = impact.record_deployed_instances(Path(args.context_file), results)
        for key, ids in written.items():
            print(f"impact: recorded {len(ids)} running instance(s) under {key} in {args.context_file}",
                  file=sys.stderr)
        print("impact: synthesize again (cdk synth): recorded instances keep their user data",
              file=sys.stderr)
        return 0
    return 1 if interrupting else 0


# ------------------------------------------------------------------------------------------ health


_HEALTH_HEADERS = ("instance", "group", "type", "lost", "peak/limit", "use_%", "owner", "drift")


def _health_cells(h: "health.MachineHealth") -> List[str]:
    def num(v: Optional[int]) -> str:
        return "-" if v is None else str(v)

    if not h.has_data:
        return [h.instance_id, h.group or "-", h.instance_type or "-", "no data", "-", "-", h.owner or "-",
                "-"]
    use = "-" if h.use_percent is None else f"{h.use_percent:.1f}"
    return [h.instance_id, h.group or "-", h.instance_type or "-", num(h.lost),
            f"{num(h.peak_backlog)}/{num(h.limit)}", use, h.owner or "-", num(h.drift)]


def _cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    from . import health

    policy = _policy_from_args(args)
    rows = health.stack_health(
        args.stack, region=args.region, hours=args.hours, policy=policy, recommend_limits=args.recommend,
        max_workers=args.max_workers,
    )
    if not rows:
        if args.format == "json":
            out.write("[]\n")
        else:
            out.write(f"stack {args.stack}: no instances\n")
        return 0
    if args.format == "json":
        json.dump(
            [dict(asdict(h), has_data=h.has_data, lost_events=h.lost_events, hours=args.hours) for h in rows],
            out, indent=2,
        )
        out.write("\n")
    else:
        out.write(format_table(_HEALTH_HEADERS, [_health_cells(h) for h in rows]))
        recs = [h for h in rows if h.recommendation is not None]
        if recs:
            out.write("\nrecommendations (over the last %d h):\n" % args.hours)
        for h in recs:
            r = h.recommendation
            assert r is not None
            mem = "memory unknown" if h.memory_mib is None else f"{h.memory_mib} MiB"
            head = f"{h.instance_id} ({h.instance_type or '?'}, {mem}): {r.action}"
            if r.limit is not None:
                head += f" {h.limit} -> {r.limit}"
            out.write(f"  {head}: {r.reason}\n")
            if r.setting:
                out.write(f"    set: {r.setting}\n")
    silent = [h for h in rows if not h.has_data]
    lost = [h for h in rows if h.lost_events]
    if silent:
        print(f"health: {len(silent)} machine(s) with {health.MONITORING_HINT}", file=sys.stderr)
    print(f"health: {len(rows)} machine(s) over {args.hours} h, {len(lost)} lost events", file=sys.stderr)
    return 1 if lost else 0


def _hours(text: str) -> int:
    """argparse type of ``health --hours``."""
    from .health import MAX_HOURS, MIN_HOURS

    value = int(text) if re.fullmatch(r"[0-9]{1,6}", text.strip()) else 0
    if not MIN_HOURS <= value <= MAX_HOURS:
        raise argparse.ArgumentTypeError(f"must be an integer from {MIN_HOURS} to {MAX_HOURS}, got {text!r}")
    return value


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
    p.add_argument("--owners", action="store_true",
                   help="also the value for each other owner of the audit socket (auditbeat, osqueryd, "
                   "go-audit)")
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
    p.add_argument(
        "--max-workers",
        type=_workers,
        default=4,
        help=f"regions queried at once, 1..{MAX_WORKERS} (default 4)",
    )
    p.set_defaults(func=_cmd_refresh)

    p = sub.add_parser("verify", help="check the instances of a deployed stack booted tuned")
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name or id")
    p.add_argument("--region", help="AWS region (default: the environment's)")
    p.add_argument(
        "--max-workers",
        type=_workers,
        default=8,
        help=f"instances checked at once, 1..{MAX_WORKERS} (default 8)",
    )
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

    p = sub.add_parser(
        "impact",
        help="what the next cdk deploy does to each deployed launch resource and its machines",
        description="Compares each stack of a synthesized cloud assembly with the template CloudFormation "
        "holds for it (GetTemplate) and says, per Instance, launch template, launch configuration, group and "
        "SSM association, what the deploy does to the running machines. Exit 1 if any would be interrupted.",
    )
    p.add_argument("cdk_out", nargs="?", default="cdk.out", metavar="CDK_OUT_DIR",
                   help="the synthesized cloud assembly (default cdk.out)")
    p.add_argument("--stack", action="append", metavar="NAME", help="only this stack (repeatable)")
    p.add_argument("--region", help="AWS region for stacks without one (default: the environment's)")
    p.add_argument("--record", action="store_true",
                   help="record each stack's deployed Instances in the context file, so the aspect keeps "
                   "their user data (no stop/start); exit 0 once recorded")
    p.add_argument("--context-file", default="cdk.context.json", metavar="FILE",
                   help="the CDK context file to record into (default cdk.context.json)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_impact)
    p = sub.add_parser(
        "health",
        help="lost events, peak backlog and the socket's owner per machine of a deployed stack (CloudWatch)",
        description="Reads the sampler's metrics (CloudWatch GetMetricData and ListMetrics) for every "
        "machine of a deployed stack over the last --hours. Exit 1 if any machine lost audit events.",
    )
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name or id")
    p.add_argument("--hours", type=_hours, default=24, help="the window, 1..1512 hours back (default 24)")
    p.add_argument("--recommend", action="store_true",
                   help="size each machine's limit from the evidence (bounded by 5 %% of its memory)")
    p.add_argument("--region", help="AWS region (default: the environment's)")
    p.add_argument(
        "--max-workers",
        type=_workers,
        default=8,
        help=f"ListMetrics calls at once, 1..{MAX_WORKERS} (default 8)",
    )
    p.add_argument("--format", choices=("text", "table", "json"), default="text",
                   help="text (a table; 'table' is the same) or json")
    _add_policy_args(p)
    p.set_defaults(func=_cmd_health)
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
