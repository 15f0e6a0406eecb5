"""``plan``: the limit the policy gives each instance type (memory, limit, worst case, share of memory)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from . import instance_memory
from .errors import CliError
from .policy import BacklogPolicy

_MIB = 1024 * 1024


@dataclass(frozen=True)
class PlanRow:
    """One row of ``plan``. ``memory_mib``/``limit`` are None for an unknown type."""

    type: str
    memory_mib: Optional[int]
    limit: Optional[int]
    worst_case_mib: Optional[float]
    percent_of_memory: Optional[float]


_MEMORY_ARG_RE = re.compile(r"^([0-9]+)(MiB|GiB)$")
#: Largest size ``plan`` takes (``BacklogPolicy.limit_for_memory``'s bound, 4 PiB).
MAX_PLAN_MIB = 2**42


def plan_rows(names: Iterable[str], policy: BacklogPolicy) -> List[PlanRow]:
    """Rows for instance type names; ``4096MiB`` / ``16GiB`` plan for a bare memory size."""
    rows = []
    for name in names:
        m = _MEMORY_ARG_RE.match(name)
        mib: Optional[int]
        if m:
            digits = m.group(1).lstrip("0") or "0"
            # Bounded before int(): a size of thousands of digits is refused here, not by int()'s own limit.
            mib = int(digits) * (1024 if m.group(2) == "GiB" else 1) if len(digits) <= 20 else None
            if mib is None or mib > MAX_PLAN_MIB:
                raise CliError(f"plan: size {name} is too large (at most {MAX_PLAN_MIB} MiB)")
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



#: Where another owner of the audit socket takes its backlog limit (it sets the kernel's limit itself and
#: would override ours): owner -> (where, the setting with ``{limit}``). See docs/cli.md, "Other owners".
OWNER_SETTINGS: Dict[str, Tuple[str, str]] = {
    "auditbeat": ("auditbeat.yml, auditd module, socket_type: unicast", "backlog_limit: {limit}"),
    "osqueryd": ("osquery flags, with --audit_allow_config=true", "--audit_backlog_limit={limit}"),
    "go-audit": ("go-audit.yaml, an item of rules:", "- -b {limit}"),
}


def owner_settings(limit: int) -> Dict[str, str]:
    """Owner -> the line that gives it ``limit`` in its own configuration."""
    return {owner: setting.format(limit=limit) for owner, (_, setting) in OWNER_SETTINGS.items()}


def type_sort_key(name: str) -> Tuple[str, int, str]:
    """Sort key for instance type names: family, then size from nano to the largest xlarge."""
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

