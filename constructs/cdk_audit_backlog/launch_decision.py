"""The decision for one launch: which limit (or ``auto``), from what, and the user data that carries it.

A pure function of what :mod:`.launch_reader` read and the aspect's settings; it writes nothing to the tree
(warnings are returned, not added) so that :mod:`.launch_tuning` can keep one decision per launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from aws_cdk import CfnResource
from aws_cdk import aws_ec2 as ec2

from . import bottlerocket, instance_memory
from . import running_instances as running_instances_module
from .block_fit import fit_block, ways_out
from .launch_reader import Group, Launch, consumer_uses, get
from .compliance import FLOOR_MEMORY_WARNING_SHARE
from .policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy
from .splice import Unsupported, leading_text, user_data_kind
from .tuning_options import TuningOptions
from .user_data import BlockInputs

__all__ = ["LaunchDecision", "TypeSizing", "AspectSettings", "decide", "size_from_types", "exclusion_reason"]

SKIPPED_WARNING = "cdk-audit-backlog:skipped"


class AspectSettings(Protocol):
    """What deciding reads of the aspect that claimed a launch (``AuditBacklog`` has all of it)."""

    options: TuningOptions
    bottlerocket: bool
    exclude: Optional[Callable[[CfnResource], bool]]
    running_instances: str


@dataclass(frozen=True)
class LaunchDecision:
    """What one launch gets: its Metadata, the user data to emit, and a warning for the user."""

    metadata: Dict[str, Any]
    user_data: Any  # resolved UserData value to emit
    warnings: Tuple[Tuple[str, str], ...] = ()  # (id, message) each
    keeps_user_data: bool = False  # skipped, or an instance already running: its own UserData stays as is
    # User data over EC2's limit even so: every way out with the size it gives (for the synth error).
    ways_out: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TypeSizing:
    """The limit the instance types of a launch give.

    :param target: the limit, or None for ``auto`` (each machine computes it from MemTotal at boot).
    :param reason: why, in words (the launch's Metadata).
    :param types: the known types, smallest memory first.
    :param memory: that smallest memory in MiB, where a single limit was chosen from it.
    :param per_type: the limit of each type, given only when all types are known and map to different
        limits (then ``target`` is None: a mixed group sizes each machine at boot).
    """

    target: Optional[int]
    reason: str
    types: List[str] = field(default_factory=list)
    memory: Optional[int] = None
    per_type: Dict[str, int] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """What the block's result line gives as the limit's source."""
        if self.per_type:
            return "mixed"
        return f"{self.types[0]}/{self.memory}MiB" if self.types and self.memory else "unknown"


def decide(launch: Launch, aspect: AspectSettings) -> LaunchDecision:
    resource = launch.resource
    resolved = launch.user_data
    skip_reason = launch.skipped or exclusion_reason(resource, aspect)
    if skip_reason:  # the user's own choice: recorded in Metadata, no warning
        return LaunchDecision({"skipped": skip_reason}, resolved, keeps_user_data=True)
    if not _is_shell_script(resolved) and _is_windows(resource):
        return _skipped(launch, "Windows launch (no Linux audit subsystem)")

    options = aspect.options
    if options.backlog_limit is not None:
        sizing = TypeSizing(options.backlog_limit, "backlog_limit set on the aspect")
    else:
        sizing = size_from_types(launch, options.policy)
    # CloudFormation drops nulls: unknown type and memory are simply absent.
    metadata: Dict[str, Any] = {
        "limit": "auto" if sizing.target is None else sizing.target,
        "reason": sizing.reason,
    }
    if sizing.per_type:
        metadata["perType"] = sizing.per_type
    elif sizing.types and sizing.memory:
        metadata.update(instanceType=sizing.types[0], memoryMiB=sizing.memory)
    if options.preset is not None:  # readers name the benchmark from it
        metadata["compliance"] = options.preset.name
    # A user data change interrupts a running AWS::EC2::Instance, directly or through the launch template it
    # launches from: a launch configuration needs no look.
    running = (
        running_instances_module.decide(
            resource, aspect.running_instances, kind=launch.cfn_resource_type, stack=launch.stack
        )
        if launch.cfn_resource_type in ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate")
        else None
    )
    if running is not None and running.note:
        metadata["deployed"] = running.note
    if running is not None and running.keep:  # already running: a user data change would stop and start it
        return LaunchDecision(metadata, resolved, _warnings(running.warning), keeps_user_data=True)
    require_mime = any(c.cfn_resource_type == "AWS::EKS::Nodegroup" for c in launch.consumers)
    ways: Tuple[str, ...] = ()
    try:
        if bottlerocket.is_bottlerocket_user_data(resolved):
            # No boot-time sizing there: a mixed group's TOML gets its smallest type's limit.
            fixed = (
                min(sizing.per_type.values()) if sizing.target is None and sizing.per_type else sizing.target
            )
            new_user_data, limit, metadata["reason"] = _merge_bottlerocket(
                resolved, aspect, fixed, sizing.reason
            )
            metadata["limit"] = limit
            metadata.pop("perType", None)
        else:
            inputs = BlockInputs.for_options(options, target=sizing.target, source=sizing.source)
            fitted = fit_block(
                resolved, inputs, compact_block=options.compact_block, require_mime=require_mime
            )
            new_user_data = fitted.user_data
            if not fitted.fits:
                ways = tuple(
                    ways_out(
                        resolved,
                        inputs,
                        fitted,
                        compact_block=options.compact_block,
                        require_mime=require_mime,
                    )
                )
    except Unsupported as e:
        return _skipped(launch, str(e))
    found = _warnings(
        running.warning if running is not None else None, _floor_warning(launch, options, sizing)
    )
    return LaunchDecision(metadata, new_user_data, found, ways_out=ways)


def _skipped(launch: Launch, reason: str) -> LaunchDecision:
    message = f"cdk-audit-backlog: {launch.resource.node.path} is not tuned: {reason}."
    return LaunchDecision(
        {"skipped": reason}, launch.user_data, ((SKIPPED_WARNING, message),), keeps_user_data=True
    )


def _warnings(*found: Optional[Tuple[str, str]]) -> Tuple[Tuple[str, str], ...]:
    return tuple(w for w in found if w is not None)


def _floor_warning(launch: Launch, options: TuningOptions, sizing: "TypeSizing") -> Optional[Tuple[str, str]]:
    """A compliance floor that a full queue makes a large share of the smallest machine's memory: say so."""
    preset = options.preset
    if preset is None or not sizing.types:
        return None
    # The types are sorted smallest memory first; a single limit already carries that memory.
    smallest = sizing.memory or instance_memory.memory_mib(sizing.types[0])
    if not smallest:
        return None
    share = preset.floor_share_of(smallest)
    if share <= FLOOR_MEMORY_WARNING_SHARE:
        return None
    worst = preset.floor * MAX_AUDIT_MESSAGE_LENGTH / (1024 * 1024)
    return (
        "cdk-audit-backlog:compliance-floor-memory",
        f"cdk-audit-backlog: {launch.resource.node.path}: the {preset.name} floor of {preset.floor} buffers "
        f"can take {worst:.0f} MiB of a {smallest} MiB machine ({share:.1%}) when the audit queue is full, "
        f"more than sizing from memory would allow; the benchmark demands it.",
    )


def exclusion_reason(resource: CfnResource, aspect: AspectSettings) -> Optional[str]:
    """Why the aspect's own ``exclude`` predicate leaves ``resource`` alone, or None."""
    if aspect.exclude is not None and aspect.exclude(resource):
        return "excluded by the aspect's exclude predicate"
    return None


def _merge_bottlerocket(
    resolved: Any, aspect: AspectSettings, target: Optional[int], reason: str
) -> Tuple[Any, int, str]:
    """(user data, limit, reason) for Bottlerocket TOML, or Unsupported saying which option is missing."""
    if not aspect.bottlerocket:
        raise Unsupported(
            "user data is Bottlerocket TOML settings (no auditd); AuditBacklog(bottlerocket=True) sets "
            "audit_backlog_limit in settings.boot.kernel-parameters instead"
        )
    if target is None:
        raise Unsupported(
            f"Bottlerocket cannot size the limit at boot ({reason}); give the launch an instance type "
            f"or the aspect a backlog_limit"
        )
    try:
        user_data, merge = bottlerocket.merge_user_data(
            resolved, target, allow_lower=aspect.options.allow_lower
        )
    except bottlerocket.NotToml as e:
        raise Unsupported(f"Bottlerocket TOML settings the merge cannot keep intact: {e}") from None
    notes = "".join(f"; {note}" for note in merge.notes)
    return user_data, merge.limit, f"{reason}; Bottlerocket settings.boot.kernel-parameters{notes}"


def _is_shell_script(user_data: Any) -> bool:
    """A ``#!`` shell script is Linux whatever the image: no need to ask the L2 for its OS."""
    try:
        return user_data_kind(leading_text(user_data)) == "shell"
    except Unsupported:
        return False


def _is_windows(resource: CfnResource) -> bool:
    """The L2 around the resource knows its image's OS (the user data may not say, e.g. none at all)."""
    parent = resource.node.scope
    if isinstance(parent, (ec2.LaunchTemplate, ec2.Instance)):
        return getattr(parent, "os_type", None) == ec2.OperatingSystemType.WINDOWS
    return False


def _candidate_types(launch: Launch, consumers: Sequence[Group]) -> Tuple[List[Any], str]:
    """The instance types the launch may run as (a non-string: not known at synth), and where they come
    from."""
    own = get(launch.data, "InstanceType")
    if launch.cfn_resource_type != "AWS::EC2::LaunchTemplate":
        return [own], "the resource"
    uses = [types for consumer in consumers for types in consumer_uses(consumer, launch.logical_id or "")]
    group_types = [t for types in uses for t in types]
    if group_types:
        # What EC2 launches: a use's overrides (or node group types) replace the template's own type; a use
        # without them launches the template's type (None, so auto, when it has none).
        return group_types + ([own] if any(not types for types in uses) else []), (
            "the groups that use this launch template"
        )
    return ([own] if own is not None else []), "the launch template"


def size_from_types(launch: Launch, policy: BacklogPolicy) -> TypeSizing:
    """The limit the launch's instance types give with ``policy``, or ``auto`` where one is unknown or the
    known types map to different limits (then each machine computes its own from MemTotal with the same
    policy, where the smallest type's limit would leave the larger machines below the policy)."""
    candidates, where = _candidate_types(launch, launch.consumers)
    if not candidates:
        return TypeSizing(None, f"no instance type on {where}: computed at boot from MemTotal")
    known: List[Tuple[int, str]] = []
    for t in candidates:
        memory = instance_memory.memory_mib(t) if isinstance(t, str) else None
        if memory is None:
            shown = t if isinstance(t, str) else "a token or instance requirements"
            return TypeSizing(
                None, f"instance type {shown} of {where} has no known memory: computed at boot from MemTotal"
            )
        known.append((memory, t))
    known.sort()
    memory, smallest = known[0]
    types = [smallest] + sorted({t for _, t in known} - {smallest})
    limit = policy.limit_for_memory(memory)
    if len(types) > 1:
        per_type = {t: policy.limit_for_memory(m) for m, t in known}
        low, high = min(per_type.values()), max(per_type.values())
        if low != high:
            reason = (
                f"instance types {', '.join(types)} ({where}) map to different limits ({low}..{high}): "
                f"each machine computes its own from MemTotal at boot"
            )
            return TypeSizing(None, reason, types, None, {t: per_type[t] for t in types})
        reason = f"smallest memory among {', '.join(types)} ({where}), {memory} MiB"
    else:
        reason = f"instance type {smallest} ({memory} MiB) of {where}"
    return TypeSizing(limit, reason, types, memory)
