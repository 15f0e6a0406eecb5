"""The backlog policy: which ``auditctl -b`` limit a machine of a given memory gets.

This module is the only Python home of the formula. Its twin in shell is ``cab_limit_for_kib`` in
``userdata/audit-backlog.sh`` (used when the instance type is unknown at synth time and the limit is
computed at boot from ``/proc/meminfo``); ``tests/test_policy_shell_agreement.py`` proves they agree.

The formula works in integers only, so that the shell (64-bit ``$(( ))`` arithmetic) can compute exactly
the same number: the memory fraction is held in parts per million.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
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
    """``value`` as a plain int if it is an integer from ``low`` to ``high``, else ValueError naming ``name``.

    Any integer type is accepted (``int``, numpy's integers: whatever ``numbers.Integral`` holds) and
    returned as a plain ``int``, so it renders and compares as one. ``bool`` (numpy's too) is refused
    although it is an int subclass (True as a limit is always a mistake), as are floats (even
    ``8192.0``), ``Decimal``, ``Fraction`` and strings: an integer option takes integers.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {_shown(value)}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {_shown(number)}")
    return number


def _shown(value: Any) -> str:
    """A value for an error message; a huge integer (10**100) by its size, since printing one with more
    than 4300 digits raises an error of its own."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) >= 10**24:
        return f"an integer of about {int(abs(int(value)).bit_length() * 0.30103) + 1} digits"
    if isinstance(value, Decimal) and value.is_finite() and abs(value.adjusted()) > 24:
        return f"Decimal of magnitude 1e{value.adjusted()}"
    return repr(value)


def _fraction(name: str, value: Any, allowed: str) -> Fraction:
    """``value`` as an exact Fraction if it is a finite real number, else ValueError naming ``name``.

    Accepted: int, float, ``Fraction``, ``Decimal`` and other real numbers (numpy's floats and integers);
    refused: bool, strings, complex, nan and the infinities (of any type: float, Decimal, numpy), and
    a ``Decimal`` whose exponent puts it far outside any fraction (1e-999999999 would take minutes to
    make exact).
    """
    bad = ValueError(f"{name} must be a number with {allowed}, got {_shown(value)}")
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise bad
    if isinstance(value, numbers.Rational):  # int, Fraction, numpy integers: exact, never converted to float
        return Fraction(int(value.numerator), int(value.denominator))
    if isinstance(value, Decimal):
        if not value.is_finite() or (not value.is_zero() and not -40 <= value.adjusted() <= 40):
            raise bad
        return Fraction(value)
    as_float = float(value)  # float and its subclasses, numpy floats; inf and nan stay inf and nan
    if not math.isfinite(as_float):
        raise bad
    return Fraction(as_float)


def validate_backlog_limit(value: Any, name: str = "backlog_limit") -> int:
    """Return ``value`` (as a plain int) if it is a backlog limit we set, else raise ValueError.

    0 is refused on purpose, although ``auditctl -b 0`` is valid: the kernel then queues without any
    bound, so a stalled auditd can take all of the machine's memory; this library exists to bound that
    worst case. A limit of 0 that an image already has is kept at boot (never lowered to a number
    unless ``allow_lower``); to come close on purpose, set the largest value, 2147483647.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) == 0:
        raise ValueError(
            f"{name} must be an integer from 1 to {KERNEL_MAX_BACKLOG_LIMIT}, got 0 (auditctl -b 0 means no "
            f"limit at all, which this library does not set; an image's existing 0 is kept)"
        )
    return _require_int(name, value, 1, KERNEL_MAX_BACKLOG_LIMIT)


def validate_backlog_wait_time(value: Any, name: str = "backlog_wait_time") -> int:
    """Return ``value`` (kernel ticks, as a plain int) if every kernel accepts it, else raise ValueError."""
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
        allowed = "0 < memory_fraction <= 0.25 (resolution 1e-6)"
        f = self.memory_fraction
        exact = _fraction("memory_fraction", f, allowed)
        if not 0 < exact <= Fraction(1, 4):
            raise ValueError(f"memory_fraction must be a number with {allowed}, got {_shown(f)}")
        # A float is scaled as a float (as always); exact types (Fraction, Decimal) exactly.
        fraction = float(f) if isinstance(f, float) else float(exact)
        ppm = round(fraction * _PPM) if isinstance(f, float) else round(exact * _PPM)
        if ppm < 1:
            raise ValueError(f"memory_fraction must be a number with {allowed}, got {_shown(f)}")
        minimum = validate_backlog_limit(self.minimum, "minimum")
        maximum = validate_backlog_limit(self.maximum, "maximum")
        if minimum > maximum:
            raise ValueError(f"minimum must be <= maximum, got minimum={minimum} > maximum={maximum}")
        # Normalized, so that a policy built from Decimal("0.01") or numpy.int64(320) is equal to (and
        # renders like) the one built from 0.01 and 320.
        object.__setattr__(self, "memory_fraction", fraction)
        object.__setattr__(self, "minimum", minimum)
        object.__setattr__(self, "maximum", maximum)
        object.__setattr__(self, "fraction_ppm", ppm)

    def limit_for_memory_bytes(self, memory_bytes: int) -> int:
        """The limit for a machine with ``memory_bytes`` of memory (e.g. MemTotal kB x 1024)."""
        memory_bytes = _require_int("memory_bytes", memory_bytes, 0, 2**62)
        budget = memory_bytes * self.fraction_ppm // _PPM
        fits = budget // MAX_AUDIT_MESSAGE_LENGTH
        # Largest power of two <= fits (fits == 0 has none: the floor applies).
        limit = 1 << (fits.bit_length() - 1) if fits else 0
        return max(self.minimum, min(self.maximum, limit))

    def limit_for_memory(self, memory_mib: int) -> int:
        """The limit for a machine with ``memory_mib`` MiB of memory (EC2's ``MemoryInfo.SizeInMiB``)."""
        memory_mib = _require_int("memory_mib", memory_mib, 0, 2**42)
        return self.limit_for_memory_bytes(memory_mib * _MIB)

    @staticmethod
    def worst_case_bytes(limit: int) -> int:
        """Kernel memory a full queue of ``limit`` buffers can take at most."""
        return _require_int("limit", limit, 0, KERNEL_MAX_BACKLOG_LIMIT) * MAX_AUDIT_MESSAGE_LENGTH
