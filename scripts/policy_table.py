#!/usr/bin/env python3
"""Writes the policy table of docs/policy.md from the code (policy.py + the instance-memory table).

`python scripts/policy_table.py` rewrites the table between the markers in docs/policy.md;
`--check` exits 1 when the table there differs from what the code gives (a test runs that).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "constructs"))

from cdk_audit_backlog.instance_memory import memory_mib  # noqa: E402
from cdk_audit_backlog.policy import BacklogPolicy  # noqa: E402

TYPES = ["t3.nano", "t3.micro", "t3.medium", "m5.large", "c5.2xlarge", "r5.2xlarge", "m5.8xlarge",
         "r6i.8xlarge", "x2iedn.8xlarge", "u-6tb1.112xlarge"]
BEGIN = "<!-- policy-table:begin (scripts/policy_table.py) -->"
END = "<!-- policy-table:end -->"


def table() -> str:
    policy = BacklogPolicy()
    rows = [
        "| instance type | memory (MiB) | limit | worst case (MiB) | % of memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in TYPES:
        mib = memory_mib(t)
        if mib is None:
            raise SystemExit(f"{t} is not in the instance-memory table")
        limit = policy.limit_for_memory(mib)
        worst = BacklogPolicy.worst_case_bytes(limit) / 2**20
        rows.append(f"| {t} | {mib:,} | {limit:,} | {worst:,.1f} | {100 * worst / mib:.2f} |")
    return "\n".join(rows)


def main() -> int:
    path = os.path.join(ROOT, "docs", "policy.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + table() + "\n" + END + tail
    if "--check" in sys.argv:
        if new != text:
            print("docs/policy.md's policy table is out of date: run python scripts/policy_table.py")
            return 1
        return 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
