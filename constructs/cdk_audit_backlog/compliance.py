"""Compliance presets: the audit backlog floor a hardening benchmark demands, memory-aware sizing above it.

The benchmarks check the kernel command line of every installed kernel:

- the DISA STIGs (Amazon Linux 2023 V-274168, likewise the RHEL STIGs) run
  ``grubby --info=ALL | grep args | grep -v 'audit_backlog_limit=8192'`` and want no output: each kernel's
  arguments must carry exactly ``audit_backlog_limit=8192``;
- the CIS benchmarks (the audit section's "audit_backlog_limit is sufficient", 4.1.2.4 in the Amazon Linux 2
  and RHEL numbering of their time; the number moves between benchmarks and versions) want
  ``audit_backlog_limit=`` on the command line with 8192 or more.

A preset keeps this library's sizing and raises it: the policy's minimum becomes the floor, so the audit
rules' ``-b`` is the floor or the policy's limit for the machine's memory, whichever is larger (an r5.4xlarge
still gets 131072), and the kernel command line is set too: to the floor exactly for the STIG, to the limit
for CIS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from .policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy

__all__ = ["ComplianceProfile", "PROFILES", "profile", "raise_policy", "FLOOR_MEMORY_WARNING_SHARE"]

#: A floor whose worst case (floor x 8970 bytes) takes more than this share of a machine's memory gets a
#: warning at synth time (t3.nano: 8192 buffers can take 70 MiB of its 512 MiB, 13.7 %).
FLOOR_MEMORY_WARNING_SHARE = 0.05


@dataclass(frozen=True)
class ComplianceProfile:
    """One benchmark's demand on the audit backlog.

    :param name: the preset's name, as the ``compliance`` option takes it.
    :param floor: the smallest limit allowed, in the rules and on the kernel command line.
    :param cmdline_exact: the benchmark checks the command line for exactly ``floor`` (the STIG's grep), so
        the command line carries the floor while the rules may carry more.
    :param rules: the benchmark rules a launch or machine below the floor fails, as findings name them.
    """

    name: str
    floor: int
    cmdline_exact: bool
    rules: Tuple[str, ...]

    @property
    def rule_text(self) -> str:
        return ", ".join(self.rules)

    def floor_share_of(self, memory_mib: int) -> float:
        """The share of ``memory_mib`` a full queue at the floor can take."""
        return self.floor * MAX_AUDIT_MESSAGE_LENGTH / (memory_mib * 1024 * 1024)


PROFILES: Dict[str, ComplianceProfile] = {
    "stig": ComplianceProfile(
        "stig", 8192, True, ("DISA STIG V-274168 (Amazon Linux 2023; the RHEL STIGs check the same)",)
    ),
    "cis": ComplianceProfile("cis", 8192, False, ("CIS 4.1.2.4 (audit_backlog_limit sufficient; >= 8192)",)),
}


def profile(name: Optional[str]) -> Optional[ComplianceProfile]:
    """The profile called ``name`` (None: no preset), or a ValueError naming the option and the presets."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"compliance must be one of {', '.join(map(repr, PROFILES))} or None, got {name!r}")
    return PROFILES[name]


def raise_policy(policy: BacklogPolicy, preset: ComplianceProfile) -> BacklogPolicy:
    """``policy`` with its minimum raised to the preset's floor (its maximum must allow the floor)."""
    if policy.maximum < preset.floor:
        raise ValueError(
            f"policy.maximum must be at least {preset.floor} with compliance={preset.name!r} "
            f"(the benchmark's floor), got {policy.maximum}"
        )
    return policy if policy.minimum >= preset.floor else replace(policy, minimum=preset.floor)
