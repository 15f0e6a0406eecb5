"""Renders the boot block from ``userdata/audit-backlog.sh`` with validated inputs.

This module takes decisions, it makes none: the aspect decides the limit; here the inputs are validated
once more (they end up in a root shell) and written into the script's input section. See
``docs/design.md`` for the block's shape and why it is a here-document run by its own ``/bin/bash``.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import zlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from .policy import BacklogPolicy, validate_backlog_limit
from .tuning_options import TuningOptions

__all__ = [
    "BlockInputs",
    "render_block",
    "render_run_command",
    "deterministic_gzip",
    "BLOCK_BEGIN",
    "BLOCK_END",
    "SCRIPT_NAME",
]

BLOCK_BEGIN = "# >>> cdk-audit-backlog >>>"
BLOCK_END = "# <<< cdk-audit-backlog <<<"
SCRIPT_NAME = "audit-backlog.sh"
_HEREDOC = "CDK_AUDIT_BACKLOG"
_INPUTS_BEGIN = "# @@CAB_INPUTS_BEGIN@@"
_INPUTS_END = "# @@CAB_INPUTS_END@@"
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*(/[0-9]+MiB)?$")
#: ``boot_unit`` values: no unit; a unit that recomputes the limit from MemTotal on every boot; a unit that
#: keeps the fixed ``target``.
BOOT_UNIT_MODES = ("off", "auto", "fixed")


@dataclass(frozen=True)
class BlockInputs:
    """What the boot block is told.

    :param target: the backlog limit, or None to compute it at boot from MemTotal ("auto").
    :param policy: the policy ``auto`` applies at boot. Default: ``BacklogPolicy()``.
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, or None to leave it. Default: None.
    :param kernel_cmdline: also persist ``audit_backlog_limit=N`` on the kernel command line. Default: False.
    :param install_auditd: install auditd where it is missing. Default: False.
    :param allow_lower: allow lowering a larger existing limit. Default: False.
    :param source: what the limit was chosen from, e.g. ``m5.large/8192MiB``. Default: ``unknown``.
    :param boot_unit: also install the boot unit (``cdk-audit-backlog.service``), which sizes the limit on
        every later boot before the audit rules load: ``"auto"`` (from MemTotal, so it follows a resize),
        ``"fixed"`` (keeps ``target``) or ``"off"``. Default: ``"off"`` (the aspect passes ``"auto"`` or
        ``"fixed"`` unless its ``boot_unit=False``).
    :param kernel_cmdline_limit: a fixed value for the kernel command line (a compliance preset's exact
        floor), or None for the machine's limit. Default: None.
    :param monitor_interval: seconds between two samples of the sampler the script installs (a systemd
        timer), or None for no sampler. Default: None.
    """

    target: Optional[int] = None
    policy: BacklogPolicy = field(default_factory=BacklogPolicy)
    backlog_wait_time: Optional[int] = None
    kernel_cmdline: bool = False
    install_auditd: bool = False
    allow_lower: bool = False
    source: str = "unknown"
    boot_unit: str = "off"
    kernel_cmdline_limit: Optional[int] = None
    monitor_interval: Optional[int] = None

    def __post_init__(self) -> None:
        # The option values are checked by TuningOptions (the one place with their error texts) and kept as
        # it normalized them: plain ints (numpy's integers are accepted too), since they are written into a
        # root shell.
        if self.target is not None:
            object.__setattr__(self, "target", validate_backlog_limit(self.target, "target"))
        if self.policy is None:
            raise ValueError("policy must be a BacklogPolicy, got None")
        options = TuningOptions(
            policy=self.policy,
            backlog_wait_time=self.backlog_wait_time,
            kernel_cmdline=self.kernel_cmdline,
            install_auditd=self.install_auditd,
            allow_lower=self.allow_lower,
            monitor_interval=self.monitor_interval,
        )
        object.__setattr__(self, "backlog_wait_time", options.backlog_wait_time)
        object.__setattr__(self, "monitor_interval", options.monitor_interval)
        if self.kernel_cmdline_limit is not None:
            limit = validate_backlog_limit(self.kernel_cmdline_limit, "kernel_cmdline_limit")
            object.__setattr__(self, "kernel_cmdline_limit", limit)
        if self.boot_unit not in BOOT_UNIT_MODES:
            raise ValueError(f"boot_unit must be one of {BOOT_UNIT_MODES}, got {self.boot_unit!r}")
        if not isinstance(self.source, str) or not _SOURCE_RE.match(self.source):
            raise ValueError(
                f"source must match {_SOURCE_RE.pattern} (an instance type and its memory), got "
                f"{self.source!r}"
            )

    @classmethod
    def for_options(cls, options: TuningOptions, *, target: Optional[int], source: str) -> "BlockInputs":
        """The block for one launch (or one carrier): the decided ``target`` (None: ``auto``) and what it was
        chosen from, with everything else as ``options`` say."""
        return cls(
            target=target,
            policy=options.policy,
            backlog_wait_time=options.backlog_wait_time,
            kernel_cmdline=options.kernel_cmdline,
            install_auditd=options.install_auditd,
            allow_lower=options.allow_lower,
            source=source,
            boot_unit=options.boot_unit_mode,
            kernel_cmdline_limit=options.kernel_cmdline_limit,
            monitor_interval=options.monitor_interval,
        )

    def features(self) -> frozenset:
        """The optional parts of the script these inputs use (the others are left out of the block)."""
        used = {
            # the unit's "auto" sizes from MemTotal at boot, so it needs the formula even for a known type
            "auto": self.target is None or self.boot_unit == "auto",
            "wait": self.backlog_wait_time is not None,
            "install": self.install_auditd,
            "cmdline": self.kernel_cmdline,
            "unit": self.boot_unit != "off",
            "monitor": self.monitor_interval is not None,
        }
        return frozenset(name for name, on in used.items() if on)

    def assignments(self) -> list[str]:
        p = self.policy
        wait = "" if self.backlog_wait_time is None else str(self.backlog_wait_time)
        return [
            f"CAB_TARGET={'auto' if self.target is None else self.target}",
            f"CAB_FRACTION_PPM={p.fraction_ppm}",
            f"CAB_MIN={p.minimum}",
            f"CAB_MAX={p.maximum}",
            f"CAB_WAIT={wait}",
            f"CAB_KERNEL_CMDLINE={int(self.kernel_cmdline)}",
            f"CAB_INSTALL_AUDITD={int(self.install_auditd)}",
            f"CAB_ALLOW_LOWER={int(self.allow_lower)}",
            f"CAB_SOURCE={self.source}",
        ] + ([] if self.boot_unit == "off" else [f"CAB_UNIT={self.boot_unit}"]) + (
            # Only a compliance preset fixes the command line's value (the STIG's exact floor).
            [] if self.kernel_cmdline_limit is None else [f"CAB_CMDLINE_LIMIT={self.kernel_cmdline_limit}"]
        ) + ([] if self.monitor_interval is None else [f"CAB_MONITOR={self.monitor_interval}"])


def script_text() -> str:
    """The shipped script as it is in ``userdata/`` (package data)."""
    return resources.files(__package__).joinpath("userdata", SCRIPT_NAME).read_text(encoding="utf-8")


#: Optional parts of the script, each between ``# @@CAB_IF <name>@@`` and ``# @@CAB_ENDIF@@``. (``monitor``,
#: the sampler ``monitor_interval`` turns on, is known here before the script has its part: until then a block
#: with it carries ``CAB_MONITOR`` and no sampler.)
FEATURES = ("auto", "wait", "install", "cmdline", "unit", "monitor")
_IF_RE = re.compile(r"^# @@CAB_IF ([a-z]+)@@$")
_ENDIF = "# @@CAB_ENDIF@@"


@functools.lru_cache(maxsize=None)
def _compact_body(features: frozenset = frozenset(FEATURES)) -> str:
    """The script's body without shebang, comments, blank lines, indentation, its input section and
    the optional parts whose feature is not in ``features``.

    Safe because the script has no here-documents and no multi-line strings (the tests run the
    rendered block, check it with ``bash -n`` and shellcheck, for every combination of features).
    An optional part left out is dead code for those inputs: each part also tests its input at run
    time, so the full script behaves the same standalone.
    """
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown block features {sorted(unknown)}; known: {FEATURES}")
    text = script_text()
    if _INPUTS_BEGIN not in text or _INPUTS_END not in text:
        raise RuntimeError(f"{SCRIPT_NAME} lost its input markers {_INPUTS_BEGIN} / {_INPUTS_END}")
    before, rest = text.split(_INPUTS_BEGIN, 1)
    _, after = rest.split(_INPUTS_END, 1)
    lines = []
    open_gate: Optional[str] = None  # the optional part we are in, if any
    keep = True  # False inside a part whose feature is off
    for line in (before + after).splitlines():
        stripped = line.strip()
        gate = _IF_RE.match(stripped)
        if gate:
            if open_gate is not None or gate.group(1) not in FEATURES:
                raise RuntimeError(f"{SCRIPT_NAME}: bad or nested gate {stripped!r}")
            open_gate, keep = gate.group(1), gate.group(1) in features
            continue
        if stripped == _ENDIF:
            if open_gate is None:
                raise RuntimeError(f"{SCRIPT_NAME}: {_ENDIF} without {_IF_RE.pattern}")
            open_gate, keep = None, True
            continue
        if not keep or not stripped or stripped.startswith("#"):
            continue
        lines.append(stripped)
    if open_gate is not None:
        raise RuntimeError(f"{SCRIPT_NAME}: gate {open_gate!r} is not closed")
    body = "\n".join(lines) + "\n"
    if _HEREDOC in body:
        raise RuntimeError(f"{SCRIPT_NAME} must not contain the here-document delimiter {_HEREDOC}")
    return body


# How the block runs its here-document. Without the unit: ``bash -s`` reads it from stdin. With the unit:
# the body goes to a temporary file first and bash runs that file, so the script has a file of its own
# (``BASH_SOURCE``) to install as the unit's ``/usr/local/sbin/cdk-audit-backlog``; the file is removed
# afterwards. Both run in their own /bin/bash: nothing reaches the user's shell.
_RUN_STDIN = f"/bin/bash -s <<'{_HEREDOC}' || true\n"
_RUN_FILE = f"/bin/bash -c 'f=$(mktemp)&&cat>\"$f\"&&/bin/bash \"$f\";rm -f \"$f\"' <<'{_HEREDOC}' || true\n"


# The compact form (docs/design.md, "The compact block"): the inputs stay plain text on the block's stdin, the
# body comes gzip-compressed and Base64-encoded on fd 3 (a second here-document with the same delimiter). Both
# are decoded into one temporary file before anything runs (gzip checks its CRC, so a damaged body runs
# nothing), and /bin/bash runs that file: the very text the plain block runs, so the console lines are the
# same.
_RUN_COMPACT = (
    "/bin/bash -c 'f=$(mktemp)&&{ cat;base64 -d<&3|gzip -dc;}>\"$f\"&&/bin/bash \"$f\";rm -f \"$f\"' "
    f"<<'{_HEREDOC}' 3<<'{_HEREDOC}' || true\n"
)
# gzip's fixed header: magic, deflate, no flags, mtime 0, "maximum compression", OS unknown (255) rather than
# the build's own OS, so the bytes do not depend on where synth runs.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
_GZIP_LEVEL = 9


def deterministic_gzip(data: bytes) -> bytes:
    """``data`` as a gzip member with a fixed header (mtime 0, level 9, OS unknown): the same bytes on every
    synth with the same zlib (see docs/design.md on zlib-ng)."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    deflated = compressor.compress(data) + compressor.flush()
    return _GZIP_HEADER + deflated + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=None)
def _compressed_body(features: frozenset) -> str:
    """The body of :func:`_compact_body` for ``features``, gzip-compressed and Base64-encoded on one line."""
    return base64.b64encode(deterministic_gzip(_compact_body(features).encode("utf-8"))).decode("ascii")


def render_block(inputs: BlockInputs, *, compact: bool = False) -> str:
    """The block, from its begin marker to its end marker, each line ending in a newline.

    :param compact: the compact form: the same script with its body gzip-compressed and Base64-encoded (the
        markers and the ``CAB_*`` lines stay plain text). Default: False.
    """
    if compact:
        return "".join(
            [
                BLOCK_BEGIN + "\n",
                _RUN_COMPACT,
                "\n".join(inputs.assignments()) + "\n",
                _HEREDOC + "\n",
                _compressed_body(inputs.features()) + "\n",
                _HEREDOC + "\n",
                BLOCK_END + "\n",
            ]
        )
    return "".join(
        [
            BLOCK_BEGIN + "\n",
            _RUN_STDIN if inputs.boot_unit == "off" else _RUN_FILE,
            "\n".join(inputs.assignments()) + "\n",
            _compact_body(inputs.features()),
            _HEREDOC + "\n",
            BLOCK_END + "\n",
        ]
    )


def render_run_command(inputs: BlockInputs) -> list[str]:
    """The same script for a fleet carrier that reads its exit status (an SSM ``aws:runShellScript`` step):
    the lines of a POSIX shell script whose status is the script's own (0 done or nothing to do, non-zero
    when the limit could not be applied, verified or persisted; see docs/design.md). Unlike the user data
    block there is no ``|| true`` and no begin/end marker: nothing runs after it, and SSM must see failure.
    """
    return [
        f"/bin/bash -s <<'{_HEREDOC}'",
        *inputs.assignments(),
        *_compact_body(inputs.features()).splitlines(),
        _HEREDOC,
    ]
