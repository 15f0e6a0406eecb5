"""The backlog policy: which ``auditctl -b`` limit a machine of a given memory gets.

This module is the only Python home of the formula. Its twin in shell is ``cab_limit_for_kib`` in
``userdata/audit-backlog.sh`` (used when the instance type is unknown at synth time and the limit is
computed at boot from ``/proc/meminfo``); ``tests/test_policy_shell_agreement.py`` proves they agree.

The formula works in integers only, so that the shell (64-bit ``$(( ))`` arithmetic) can compute exactly
the same number: the memory fraction is held in parts per million.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BacklogPolicy",
    "MAX_AUDIT_MESSAGE_LENGTH",
    "KERNEL_MAX_BACKLOG_LIMIT",
    "MAX_BACKLOG_WAIT_TIME",
    "validate_backlog_limit",
    "validate_backlog_wait_time",
]

#: Bytes one queued audit buffer can cost at most (``MAX_AUDIT_MESSAGE_LENGTH`` in linux/audit.h).
MAX_AUDIT_MESSAGE_LENGTH = 8970

#: Largest ``-b`` we accept. The kernel keeps the limit in a u32 and treats 0 as "no limit at all";
#: audit 2.x userspace passes it through a signed int, so 2**31 - 1 is the largest value every
#: ``auditctl -b`` in use accepts unchanged.
KERNEL_MAX_BACKLOG_LIMIT = 2**31 - 1

#: Largest ``--backlog_wait_time`` (kernel ticks) accepted on every kernel: the kernel refuses values
#: above 10 x its default of 60*HZ, and HZ is 100 on the slowest-ticking kernels in use, so 60000 ticks
#: (Debian's shipped value: 240 s at HZ=250, 60 s at HZ=1000) is the largest portable value.
MAX_BACKLOG_WAIT_TIME = 60000

_PPM = 1_000_000
_MIB = 1024 * 1024


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    # bool is an int subclass; True as a limit is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value}")
    return value


def validate_backlog_limit(value: Any, name: str = "backlog_limit") -> int:
    """Return ``value`` if it is a backlog limit the kernel and ``auditctl -b`` accept, else raise ValueError."""
    return _require_int(name, value, 1, KERNEL_MAX_BACKLOG_LIMIT)


def validate_backlog_wait_time(value: Any, name: str = "backlog_wait_time") -> int:
    """Return ``value`` (kernel ticks) if every kernel accepts it, else raise ValueError."""
    return _require_int(name, value, 0, MAX_BACKLOG_WAIT_TIME)


@dataclass(frozen=True)
class BacklogPolicy:
    """How the backlog limit follows memory.

    The limit is the largest power of two whose worst case (limit x 8970 bytes, one full-size audit
    message per queued buffer) fits in ``memory_fraction`` of the machine's memory, clamped to
    ``[minimum, maximum]``.

    :param memory_fraction: share of memory the full queue may take at worst, 0 < f <= 0.25, with a
        resolution of one part per million. Default: 0.01 (1 %).
    :param minimum: smallest limit ever chosen. Default: 320 (the limit many distributions ship).
    :param maximum: largest limit ever chosen. Default: 262144 (about 2.2 GiB worst case).
    """

    memory_fraction: float = 0.01
    minimum: int = 320
    maximum: int = 262144
    fraction_ppm: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        f = self.memory_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or f != f:
            raise ValueError(f"memory_fraction must be a number with 0 < memory_fraction <= 0.25, got {f!r}")
        ppm = round(f * _PPM)
        if not 0 < f <= 0.25 or ppm < 1:
            raise ValueError(
                f"memory_fraction must be a number with 0 < memory_fraction <= 0.25 "
                f"(resolution 1e-6), got {f!r}"
            )
        validate_backlog_limit(self.minimum, "minimum")
        validate_backlog_limit(self.maximum, "maximum")
        if self.minimum > self.maximum:
            raise ValueError(
                f"minimum must be <= maximum, got minimum={self.minimum} > maximum={self.maximum}"
            )
        object.__setattr__(self, "fraction_ppm", ppm)

    def limit_for_memory_bytes(self, memory_bytes: int) -> int:
        """The limit for a machine with ``memory_bytes`` of memory (e.g. MemTotal kB x 1024)."""
        _require_int("memory_bytes", memory_bytes, 0, 2**62)
        budget = memory_bytes * self.fraction_ppm // _PPM
        fits = budget // MAX_AUDIT_MESSAGE_LENGTH
        # Largest power of two <= fits (fits == 0 has none: the floor applies).
        limit = 1 << (fits.bit_length() - 1) if fits else 0
        return max(self.minimum, min(self.maximum, limit))

    def limit_for_memory(self, memory_mib: int) -> int:
        """The limit for a machine with ``memory_mib`` MiB of memory (EC2's ``MemoryInfo.SizeInMiB``)."""
        _require_int("memory_mib", memory_mib, 0, 2**42)
        return self.limit_for_memory_bytes(memory_mib * _MIB)

    @staticmethod
    def worst_case_bytes(limit: int) -> int:
        """Kernel memory a full queue of ``limit`` buffers can take at most."""
        return limit * MAX_AUDIT_MESSAGE_LENGTH
