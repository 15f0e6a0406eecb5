"""``TuningOptions``: what every carrier is told about the limit, validated once.

The aspect, the SSM association, the Image Builder component, the Karpenter helper and the block renderer all
take this one frozen value. Their users keep passing keyword arguments (aws-cdk-lib props style); each entry
point builds a ``TuningOptions`` from them, and only here is a value checked, with one error text per option
(the option's name and what is allowed).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

from .compliance import ComplianceProfile, profile, raise_policy
from .monitoring_metrics import MAX_INTERVAL_S, MIN_INTERVAL_S
from .policy import BacklogPolicy, _require_int, validate_backlog_limit, validate_backlog_wait_time

__all__ = ["TuningOptions", "validate_flag", "validate_compact_block", "validate_monitor_interval"]


def validate_flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else a ValueError naming ``name`` (1, "yes" or None are mistakes)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def validate_compact_block(value: Any) -> Optional[bool]:
    """``value`` if it is None, True or False, else a ValueError naming ``compact_block``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(
            f"compact_block must be None (compact only where the plain block would not fit), True or False, "
            f"got {value!r}"
        )
    return value


def validate_monitor_interval(value: Any, name: str = "monitor_interval") -> Optional[int]:
    """``value`` (seconds, as a plain int) if it is None or MIN_INTERVAL_S..MAX_INTERVAL_S, else a ValueError
    naming ``name``."""
    if value is None:
        return None
    return _require_int(name, value, MIN_INTERVAL_S, MAX_INTERVAL_S)


@dataclass(frozen=True)
class TuningOptions:
    """How a machine's audit backlog is tuned, whatever carries the script there.

    :param backlog_limit: a fixed limit, 1..2147483647. Default: None (chosen per launch from the instance
        type's memory with ``policy``; computed at boot from MemTotal where the type is unknown).
    :param policy: how the limit follows memory. Default: ``BacklogPolicy()`` (1 % of memory, 320..262144).
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000. Default: None (left as the
        image has it).
    :param kernel_cmdline: also set ``audit_backlog_limit=N`` on the kernel command line (next boot).
        Default: False.
    :param install_auditd: install auditd where the image lacks it. Default: False.
    :param allow_lower: lower a larger limit the machine already has. Default: False (never lower).
    :param boot_unit: also install the systemd unit that sizes the limit again on every later boot, before the
        audit rules load. Default: True (carriers that run on a machine only once, such as the SSM
        association, pass False).
    :param compliance: a hardening benchmark's floor: ``"stig"`` (DISA STIG: exactly
        ``audit_backlog_limit=8192`` on the kernel command line) or ``"cis"`` (CIS: 8192 or more there). The
        policy's minimum becomes 8192 (the rules' ``-b`` is 8192 or the policy's limit for the memory,
        whichever is larger), ``kernel_cmdline`` is turned on, and a fixed ``backlog_limit`` must be at least
        8192.
        Default: None (no floor beyond the policy's minimum).
    :param compact_block: the block's form in user data: ``None`` plain, or compact (the same script with its
        body gzip-compressed and Base64-encoded, about a third smaller; its ``CAB_*`` lines and markers stay
        plain) where the plain block would make the user data exceed EC2's 16,384 bytes; ``True`` always
        compact; ``False`` always plain. Carriers that write no user data (the SSM association, the Image
        Builder component) ignore it. Default: None.
    :param monitor_interval: seconds between two samples of the machine's audit status (one ``auditctl -s``
        each, published to the CloudWatch agent's StatsD listener by a systemd timer the script installs),
        10..3600. Default: None (no sampler).
    """

    backlog_limit: Optional[int] = None
    policy: Optional[BacklogPolicy] = None
    backlog_wait_time: Optional[int] = None
    kernel_cmdline: bool = False
    install_auditd: bool = False
    allow_lower: bool = False
    boot_unit: bool = True
    compliance: Optional[str] = None
    compact_block: Optional[bool] = None
    monitor_interval: Optional[int] = None

    def __post_init__(self) -> None:
        # Stored normalized (numpy's integers become plain ints, None becomes the default policy), so that
        # equal options compare and render alike.
        if self.backlog_limit is not None:
            object.__setattr__(self, "backlog_limit", validate_backlog_limit(self.backlog_limit))
        if self.policy is None:
            object.__setattr__(self, "policy", BacklogPolicy())
        elif not isinstance(self.policy, BacklogPolicy):
            raise ValueError(f"policy must be a BacklogPolicy, got {self.policy!r}")
        if self.backlog_wait_time is not None:
            object.__setattr__(self, "backlog_wait_time", validate_backlog_wait_time(self.backlog_wait_time))
        for name in ("kernel_cmdline", "install_auditd", "allow_lower", "boot_unit"):
            validate_flag(name, getattr(self, name))
        validate_compact_block(self.compact_block)
        object.__setattr__(self, "monitor_interval", validate_monitor_interval(self.monitor_interval))
        preset = self.preset
        if preset is not None:
            object.__setattr__(self, "policy", raise_policy(self.policy, preset))  # type: ignore[arg-type]
            object.__setattr__(self, "kernel_cmdline", True)
            if self.backlog_limit is not None and self.backlog_limit < preset.floor:
                raise ValueError(
                    f"backlog_limit must be at least {preset.floor} with compliance={preset.name!r} (the "
                    f"benchmark's floor), got {self.backlog_limit}"
                )

    @property
    def preset(self) -> Optional[ComplianceProfile]:
        """The compliance preset, if any."""
        return profile(self.compliance)

    @property
    def kernel_cmdline_limit(self) -> Optional[int]:
        """A fixed value for the kernel command line (the STIG's exact floor), or None for the machine's
        limit."""
        preset = self.preset
        return preset.floor if preset is not None and preset.cmdline_exact else None

    @property
    def boot_unit_mode(self) -> str:
        """The boot unit's mode for the renderer: ``"off"``; ``"fixed"`` for the user's own limit; ``"auto"``
        for a limit chosen from memory, which follows the memory at every boot (a resized instance)."""
        if not self.boot_unit:
            return "off"
        return "fixed" if self.backlog_limit is not None else "auto"

    def as_keywords(self) -> Dict[str, Any]:
        """The options as the keyword arguments they came from."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
