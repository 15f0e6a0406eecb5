"""``refresh-types``: regenerates the bundled instance-memory table from EC2 ``DescribeInstanceTypes``."""

from __future__ import annotations

import datetime
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import instance_memory
from .aws_api import aws_errors, boto3_module, client_config
from .errors import CliError
from .plan import type_sort_key

DEFAULT_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
)


def fetch_instance_memory(
    session: Any, regions: Sequence[str], *, max_workers: int = 4
) -> Tuple[Dict[str, int], List[str]]:
    """Every type -> MemoryInfo.SizeInMiB from ``DescribeInstanceTypes`` in ``regions`` (paginated), merged.

    Returns ``(entries, conflicts)``; a type whose memory differs between regions keeps the first
    region's figure (in ``regions`` order) and is listed in ``conflicts``.
    """
    if not regions:
        raise CliError("refresh-types: no regions")
    config = client_config()
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
            pool.map(lambda r: aws_errors(f"DescribeInstanceTypes in {r}", lambda: one(r)), regions)
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
    client = session.client("ec2", region_name=region, config=client_config())
    resp = aws_errors("DescribeRegions", lambda: client.describe_regions(AllRegions=False))
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
        session = boto3_module().session.Session()
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
        added=sorted(set(entries) - set(old), key=type_sort_key),
        removed=sorted(set(old) - set(entries), key=type_sort_key),
        changed=sorted(
            (f"{t}: {old[t]} -> {entries[t]} MiB" for t in set(old) & set(entries) if old[t] != entries[t]),
        ),
        conflicts=conflicts,
    )
