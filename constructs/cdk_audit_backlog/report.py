"""``report``: what the aspect chose for every launch resource of a synthesized cloud assembly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import testing
from .cloud_assembly import AssemblyError, assembly_templates
from .deployed_context import user_data_kept
from .errors import CliError
from .testing import METADATA_KEY


@dataclass
class ReportRow:
    """One launch resource of a synthesized template.

    ``limit`` is the Metadata's limit (``8192``, ``auto``), ``skipped``, or ``-`` when the aspect never saw
    the resource; ``blocks`` is how many blocks its decoded user data carries (None: an ASG, whose launch
    template or configuration carries them); ``per_type`` is the Metadata's limit per instance type for a
    group whose types map to different limits (``auto``: each machine sizes itself at boot), else empty.
    """

    template: str
    logical_id: str
    resource_type: str
    limit: str
    instance_type: Optional[str]
    memory_mib: Optional[int]
    blocks: Optional[int]
    reason: str
    per_type: Dict[str, int] = field(default_factory=dict)
    #: the Instance already runs and the aspect kept its user data (the association tunes it).
    kept: bool = False
    #: another owner of the audit socket its user data configures -> the backlog_limit set there
    #: (auditbeat's ``backlog_limit``, osquery's ``--audit_backlog_limit``, a go-audit ``-b`` rule).
    owners: Dict[str, int] = field(default_factory=dict)

    def owner_notes(self) -> List[str]:
        """One sentence per other owner: the limit it sets and whether it agrees with the launch's limit."""
        from .verify import owner_verdict

        expected = int(self.limit) if self.limit.isdigit() else None
        return [owner_verdict(owner, value, expected)[1] for owner, value in self.owners.items()]

    @property
    def limit_shown(self) -> str:
        """The limit for a table: ``auto: m5.large=8192 r5.4xlarge=131072`` where the Metadata lists types."""
        if not self.per_type:
            return self.limit
        return f"{self.limit}: " + " ".join(f"{t}={n}" for t, n in self.per_type.items())


def report_assembly(cdk_out: Path) -> List[ReportRow]:
    """Rows for every launch resource of every template in a cloud assembly (nested assemblies too).

    The templates are those :func:`.cloud_assembly.assembly_templates` finds (the stacks of the manifest and
    their nested stacks). User data is decoded by :mod:`cdk_audit_backlog.testing` (the reader that shares
    no code with the writer); the choice is read from the ``cdk-audit-backlog`` Metadata the aspect writes.
    """
    try:
        templates = assembly_templates(cdk_out)
    except AssemblyError as e:
        raise CliError(f"report: {e}") from None
    rows: List[ReportRow] = []
    for found_template in templates:
        name, template = found_template.name, found_template.template
        try:
            found = {each.logical_id: each for each in testing.launches(template)}
        except ValueError as e:  # testing.MalformedBlock, or user data that is not Base64 of UTF-8
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
                if meta.get("deployed"):
                    row.reason += f"; {meta['deployed']}"
                row.kept = user_data_kept(meta)
                if launch is not None:
                    row.per_type = launch.per_type
            if launch is not None and launch.user_data:
                row.owners = testing.other_owner_settings(launch.user_data)
                if row.owners:
                    row.reason += "; " + "; ".join(row.owner_notes())
            rows.append(row)
    return rows
