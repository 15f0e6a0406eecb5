"""``AuditBacklog``: the aspect that tunes every EC2 Linux launch under a scope.

How it works, in the order CDK drives it:

1. ``visit`` (aspect phase) sees every construct; for each launch L1 (``AWS::EC2::Instance``,
   ``AWS::EC2::LaunchTemplate``, ``AWS::AutoScaling::LaunchConfiguration``) it records a *claim* on a hidden
   child of that L1 (:class:`_Tuning`) and, on the first claim only, overrides the L1's ``UserData`` and adds
   ``Metadata`` with lazy values. Every later visit, by this or another ``AuditBacklog``, only adds a claim,
   so a resource is tuned once however many aspects apply.
2. Validation (after all aspects) and synthesis resolve those lazy values through one cached outcome: the
   claim of the aspect nearest to the resource wins; the instance type (or the types of the Auto Scaling
   groups / node groups that use a launch template) gives the memory, the policy gives the limit, and
   :mod:`.splice` puts the rendered block into the user data the user's code produced. Because the original
   user data is resolved only then, lines the user adds after creating the launch are still kept.
3. Launches that cannot be tuned safely (Windows, Bottlerocket, user data behind a token) keep their user
   data byte for byte, get ``{"skipped": reason}`` Metadata and a warning with a stable id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jsii
from aws_cdk import (
    Annotations,
    AspectPriority,
    Aspects,
    CfnParameter,
    CfnResource,
    Reference,
    IAspect,
    IResolvable,
    IResolveContext,
    Stack,
    Stage,
    Token,
    Tokenization,
)
from aws_cdk import aws_ec2 as ec2
from constructs import Construct, IConstruct, IValidation

from . import bottlerocket, instance_memory
from . import running_instances as running_instances_module
from .policy import BacklogPolicy, validate_backlog_limit, validate_backlog_wait_time
from .splice import Unsupported, literal_bytes, splice_user_data
from .user_data import BlockInputs, render_block

__all__ = ["AuditBacklog", "METADATA_KEY", "EC2_USER_DATA_LIMIT"]

#: CloudFormation Metadata key on every launch the aspect saw.
METADATA_KEY = "cdk-audit-backlog"
#: EC2 refuses user data larger than 16 KB before Base64 encoding.
EC2_USER_DATA_LIMIT = 16384

# Resource type -> dotted path of its UserData property.
_USER_DATA_PATH = {
    "AWS::EC2::Instance": "UserData",
    "AWS::EC2::LaunchTemplate": "LaunchTemplateData.UserData",
    "AWS::AutoScaling::LaunchConfiguration": "UserData",
}
_CONSUMER_TYPES = ("AWS::AutoScaling::AutoScalingGroup", "AWS::EKS::Nodegroup")
_TUNING_ID = "CdkAuditBacklog"
_SKIP_ID = "CdkAuditBacklogSkip"


@dataclass(frozen=True)
class _Outcome:
    metadata: Dict[str, Any]
    user_data: Any  # resolved UserData value to emit
    warning: Optional[Tuple[str, str]] = None  # (id, message)


@jsii.implements(IAspect)
class AuditBacklog:
    """Sizes the kernel audit backlog of every EC2 Linux launch under the scope it is added to.

    Add it to an app with :meth:`apply_to` (reaches Stages too), or ``Aspects.of(scope).add(AuditBacklog())``.

    :param backlog_limit: a fixed limit for every launch, 1..2147483647. Default: None (chosen per launch
        from the instance type's memory with ``policy``; "auto" at boot where the type is unknown).
    :param policy: how the limit follows memory. Default: ``BacklogPolicy()`` (1 % of memory, 320..262144).
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000 (how long an audited process
        sleeps when the queue is full; 60*HZ is the kernel's default). Default: None (left as the image has it).
    :param kernel_cmdline: also set ``audit_backlog_limit=N`` on the kernel command line, which covers the
        boot before auditd starts (takes effect at the next boot). Default: False.
    :param install_auditd: install auditd where the image lacks it. Default: False.
    :param allow_lower: lower a larger limit the image already has. Default: False (never lower).
    :param boot_unit: also install a systemd unit that sizes the limit again on every later boot, before the
        audit rules load (so a stopped, resized and started instance follows its new memory): from MemTotal
        where the limit was chosen from the instance type, or the fixed ``backlog_limit``. Only on systemd
        hosts that merge rules.d with augenrules. Default: True.
    :param bottlerocket: tune Bottlerocket launches (TOML user data) too: ``audit_backlog_limit`` goes
        into ``settings.boot.kernel-parameters`` with ``settings.boot.reboot-to-reconcile = true`` (one
        reboot during the first boot). Needs a known instance type or ``backlog_limit`` (Bottlerocket has
        no boot hook to size from MemTotal). Default: False (skipped with a warning).
    :param exclude: predicate on each launch L1 resource; True leaves it untouched (Metadata says so).
        Default: None (no exclusions). See also :meth:`skip`.
    :param running_instances: what to do with an ``AWS::EC2::Instance`` recorded as already running (in
        ``cdk.context.json`` by ``cdk-audit-backlog impact --record``): ``"keep"`` leaves its user data byte
        for byte (changing it would stop and start the instance; the SSM association tunes it instead),
        ``"restart"`` tunes its user data anyway (the next deploy stops and starts it). Instances not
        recorded boot tuned either way. Default: ``"keep"``. See :mod:`.running_instances`.
    """

    def __init__(
        self,
        *,
        backlog_limit: Optional[int] = None,
        policy: Optional[BacklogPolicy] = None,
        backlog_wait_time: Optional[int] = None,
        kernel_cmdline: bool = False,
        install_auditd: bool = False,
        allow_lower: bool = False,
        boot_unit: bool = True,
        bottlerocket: bool = False,
        exclude: Optional[Callable[[CfnResource], bool]] = None,
        running_instances: str = "keep",
    ) -> None:
        if backlog_limit is not None:
            backlog_limit = validate_backlog_limit(backlog_limit)
        if policy is not None and not isinstance(policy, BacklogPolicy):
            raise ValueError(f"policy must be a BacklogPolicy, got {policy!r}")
        if backlog_wait_time is not None:
            backlog_wait_time = validate_backlog_wait_time(backlog_wait_time)
        for name, value in (
            ("kernel_cmdline", kernel_cmdline),
            ("install_auditd", install_auditd),
            ("allow_lower", allow_lower),
            ("boot_unit", boot_unit),
            ("bottlerocket", bottlerocket),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if exclude is not None and not callable(exclude):
            raise ValueError(f"exclude must be a callable taking a CfnResource, got {exclude!r}")
        if running_instances not in running_instances_module.RUNNING_INSTANCES:
            allowed = ", ".join(map(repr, running_instances_module.RUNNING_INSTANCES))
            raise ValueError(f"running_instances must be one of {allowed}, got {running_instances!r}")
        self.backlog_limit = backlog_limit
        self.policy = policy or BacklogPolicy()
        self.backlog_wait_time = backlog_wait_time
        self.kernel_cmdline = kernel_cmdline
        self.install_auditd = install_auditd
        self.allow_lower = allow_lower
        self.boot_unit = boot_unit
        self.bottlerocket = bottlerocket
        self.exclude = exclude
        self.running_instances = running_instances
        # Per-stack index of which groups use which launch template, built once at synthesis (when the
        # tree is final) by the first launch template that needs it.
        self._group_index: Dict[int, Dict[str, List[CfnResource]]] = {}

    def _groups_by_template(self, stack: Stack) -> Dict[str, List[CfnResource]]:
        key = id(stack)  # jsii keeps one Python object per JS object alive for the process: ids are stable
        if key not in self._group_index:
            self._group_index[key] = _groups_by_launch_template(stack)
        return self._group_index[key]

    # -- entry points ------------------------------------------------------------------------------

    @classmethod
    def apply_to(cls, scope: IConstruct, *, association: Any = False, **options: Any) -> "AuditBacklog":
        """Adds one ``AuditBacklog(**options)`` to ``scope`` and to every Stage beneath it, however deep.

        CDK does not carry an app's aspects into Stages (each Stage is its own cloud assembly), so CDK
        Pipelines apps need this. Call it after the app's stacks and stages exist, just before ``app.synth()``.
        Calling it again adds nothing twice.

        :param association: also tune the machines that already run: ``True`` or an
            ``association.AssociationOptions`` adds an ``AuditBacklogAssociation`` (SSM document and State
            Manager association, same policy inputs as the aspect) to every stack with an EC2 launch, Stages
            and nested stacks included. Default: False.
        """
        aspect = cls(**options)
        if association is not False:
            from .association import add_to_stacks

            add_to_stacks(scope, aspect, association)
        targets = [scope] + [c for c in scope.node.find_all() if c is not scope and isinstance(c, Stage)]
        for target in targets:
            if not any(isinstance(a, AuditBacklog) for a in Aspects.of(target).all):
                Aspects.of(target).add(aspect, priority=AspectPriority.MUTATING)
        return aspect

    @staticmethod
    def skip(scope: IConstruct, reason: str) -> None:
        """Leaves every launch under ``scope`` untouched; the reason shows in each launch's Metadata."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason must be a non-empty string saying why the launch is not tuned")
        existing = scope.node.try_find_child(_SKIP_ID)
        if isinstance(existing, _SkipMarker):
            existing.reason = reason
        else:
            _SkipMarker(scope, reason)

    # -- the aspect --------------------------------------------------------------------------------

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            if isinstance(node, Stage) and node.node.scope is None:
                _warn_about_unreached_stages(node, self)
            return
        kind = node.cfn_resource_type
        if kind in _USER_DATA_PATH:
            _Tuning.of(node).claim(self)
        elif kind in _CONSUMER_TYPES and not _skip_reason(node, self):
            _warn_if_launch_is_out_of_reach(node)

    def block_inputs(self, target: Optional[int], source: str) -> BlockInputs:
        return BlockInputs(
            target=target,
            policy=self.policy,
            backlog_wait_time=self.backlog_wait_time,
            kernel_cmdline=self.kernel_cmdline,
            install_auditd=self.install_auditd,
            allow_lower=self.allow_lower,
            source=source,
            # a limit chosen from the instance type follows the memory at every boot; the user's stays fixed
            boot_unit="off" if not self.boot_unit else "fixed" if self.backlog_limit is not None else "auto",
        )


def _distance_to_aspect(node: IConstruct, aspect: AuditBacklog) -> int:
    """Depth of the nearest scope (the node itself or an ancestor) that carries ``aspect``; deeper is nearer."""
    scopes = node.node.scopes  # root first
    for depth in range(len(scopes) - 1, -1, -1):
        if any(a is aspect for a in Aspects.of(scopes[depth]).all):
            return depth
    return -1  # invoked through a path we cannot see (e.g. a Stage's inherited list): farthest


def _warn_if_launch_is_out_of_reach(group: CfnResource) -> None:
    """A group whose launch template or configuration is not a resource of this app cannot be tuned: say so."""
    if group.cfn_resource_type == "AWS::EKS::Nodegroup":
        spec = getattr(group, "launch_template", None)
        if spec is None:
            reason: Optional[str] = (
                "the node group has no launch template, so EKS writes its user data; give it a launch template"
            )
        else:
            reason = _out_of_reach([getattr(spec, "id", None), getattr(spec, "name", None)])
    else:
        spec = getattr(group, "launch_template", None)
        if spec is None:
            mixed_lt = getattr(getattr(group, "mixed_instances_policy", None), "launch_template", None)
            spec = getattr(mixed_lt, "launch_template_specification", None)
        refs = [getattr(spec, "launch_template_id", None), getattr(spec, "launch_template_name", None)]
        refs.append(getattr(group, "launch_configuration_name", None))
        reason = _out_of_reach(refs)
    if reason:
        Annotations.of(group).add_warning_v2(
            "cdk-audit-backlog:skipped", f"cdk-audit-backlog: {group.node.path} is not tuned: {reason}."
        )


def _out_of_reach(refs: List[Any]) -> Optional[str]:
    """Why the launch named by ``refs`` (id/name strings or tokens) cannot be tuned, or None if it can."""
    refs = [r for r in refs if isinstance(r, str)]
    if not refs:
        return None  # nothing we can read: say nothing rather than guess
    for ref in refs:
        if not Token.is_unresolved(ref):
            continue
        token = Tokenization.reverse(ref)
        target = token.target if isinstance(token, Reference) else None
        if isinstance(target, CfnResource) and target.cfn_resource_type in _USER_DATA_PATH:
            return None
        if isinstance(target, CfnParameter):
            return f"its launch template comes from the parameter {target.node.path}"
    return "its launch template is imported (not defined in this app), so its user data cannot be seen or changed here"


def _warn_about_unreached_stages(app: Stage, aspect: AuditBacklog) -> None:
    """``Aspects.of(app).add(...)`` never reaches Stages: say so where the user sees it."""
    if not any(a is aspect for a in Aspects.of(app).all):
        return
    unreached = [
        c
        for c in app.node.find_all()
        if c is not app and isinstance(c, Stage) and not any(isinstance(a, AuditBacklog) for a in Aspects.of(c).all)
    ]
    if not unreached:
        return
    names = ", ".join(s.node.path for s in unreached)
    message = (
        f"cdk-audit-backlog: AuditBacklog was added to the app, but CDK does not apply an app's aspects inside "
        f"Stages, so launches in {names} are NOT tuned. Use AuditBacklog.apply_to(app) just before app.synth()."
    )
    stacks = [c for c in app.node.children if Stack.is_stack(c)]
    for stack in stacks:
        Annotations.of(stack).add_warning_v2("cdk-audit-backlog:stage-not-reached", message)
    if not stacks:
        import sys

        print(f"[Warning] {message}", file=sys.stderr)


class _SkipMarker(Construct):
    """Hidden child that marks a scope as excluded by :meth:`AuditBacklog.skip` (a child is one lookup away
    for the aspect, unlike node metadata, which carries stack traces across the jsii bridge)."""

    used = False  # set once skip() is called in this process: until then no scope needs a look

    def __init__(self, scope: IConstruct, reason: str) -> None:
        super().__init__(scope, _SKIP_ID)
        self.reason = reason
        _SkipMarker.used = True


class _Tuning(Construct):
    """Hidden child of one launch L1: the claims of the aspects that reached it and the cached outcome."""

    @classmethod
    def of(cls, resource: CfnResource) -> "_Tuning":
        existing = resource.node.try_find_child(_TUNING_ID)
        if isinstance(existing, _Tuning):
            return existing
        return cls(resource, _TUNING_ID, resource)

    def __init__(self, scope: CfnResource, id: str, resource: CfnResource) -> None:
        super().__init__(scope, id)
        self.resource = resource
        self.claims: List[AuditBacklog] = []
        self._outcome: Optional[_Outcome] = None
        path = _USER_DATA_PATH[resource.cfn_resource_type]
        resource.add_property_override(path, _Producer(self, "user_data"))
        resource.add_metadata(METADATA_KEY, _Producer(self, "metadata"))
        resource.node.add_validation(_Validation(self))

    def claim(self, aspect: AuditBacklog) -> None:
        if not any(a is aspect for a in self.claims):
            self.claims.append(aspect)

    @property
    def winner(self) -> AuditBacklog:
        if len(self.claims) == 1:
            return self.claims[0]
        # Nearest scope wins; between aspects on the same scope, the one added (and so visiting) last.
        ranked = [(_distance_to_aspect(self.resource, a), i, a) for i, a in enumerate(self.claims)]
        return max(ranked, key=lambda c: (c[0], c[1]))[2]

    def outcome(self) -> _Outcome:
        if self._outcome is None:
            self._outcome = _decide(self.resource, self.winner)
            if self._outcome.warning:
                Annotations.of(self.resource).add_warning_v2(*self._outcome.warning)
        return self._outcome


@jsii.implements(IValidation)
class _Validation:
    def __init__(self, tuning: _Tuning) -> None:
        self._tuning = tuning

    def validate(self) -> List[str]:
        outcome = self._tuning.outcome()
        size = literal_bytes(outcome.user_data)
        if size > EC2_USER_DATA_LIMIT:
            return [
                f"cdk-audit-backlog: the user data of {self._tuning.resource.node.path} is {size} bytes with the "
                f"audit backlog block (at least, not counting tokens); EC2 accepts at most {EC2_USER_DATA_LIMIT} "
                f"bytes. Shorten the user data or exclude this launch with AuditBacklog.skip()."
            ]
        return []


@jsii.implements(IResolvable)
class _Producer:
    """Lazy value of the overridden UserData or of the Metadata, both from the one cached outcome.

    An ``IResolvable`` of our own rather than ``Lazy.any``: CDK resolves it only at synthesis, every time
    with a context, and the outcome it reads is computed once.
    """

    def __init__(self, tuning: _Tuning, field: str) -> None:
        self._tuning = tuning
        self._field = field

    @property
    def creation_stack(self) -> List[str]:
        return []

    def resolve(self, context: IResolveContext) -> Any:
        return getattr(self._tuning.outcome(), self._field)

    def to_string(self) -> str:
        return Token.as_string(self)


# -- deciding -------------------------------------------------------------------------------------


def _decide(resource: CfnResource, aspect: AuditBacklog) -> _Outcome:
    stack = Stack.of(resource)
    lt_data = (
        stack.resolve(resource.launch_template_data)  # type: ignore[attr-defined]
        if resource.cfn_resource_type == "AWS::EC2::LaunchTemplate"
        else None
    )
    resolved = _get(lt_data, "UserData") if lt_data is not None else stack.resolve(resource.user_data)  # type: ignore[attr-defined]
    skip_reason = _skip_reason(resource, aspect)
    if skip_reason:  # the user's own choice: recorded in Metadata, no warning
        return _Outcome({"skipped": skip_reason}, resolved)
    if _is_windows(resource):
        reason = "Windows launch (no Linux audit subsystem)"
        message = f"cdk-audit-backlog: {resource.node.path} is not tuned: {reason}."
        return _Outcome({"skipped": reason}, resolved, ("cdk-audit-backlog:skipped", message))

    consumers = _consumers(resource, aspect) if resource.cfn_resource_type == "AWS::EC2::LaunchTemplate" else []
    if aspect.backlog_limit is not None:
        target: Optional[int] = aspect.backlog_limit
        types, memory, reason, per_type = [], None, "backlog_limit set on the aspect", {}
    else:
        target, types, memory, reason, per_type = _limit_from_types(resource, lt_data, consumers, aspect.policy)
    if per_type:  # known types with different limits: auto, each machine sizes itself at boot
        source = "mixed"
    else:
        source = f"{types[0]}/{memory}MiB" if types and memory else "unknown"
    # CloudFormation drops nulls: unknown type and memory are simply absent.
    metadata: Dict[str, Any] = {"limit": "auto" if target is None else target, "reason": reason}
    if per_type:
        metadata["perType"] = per_type
    elif types and memory:
        metadata.update(instanceType=types[0], memoryMiB=memory)
    running = running_instances_module.decide(resource, aspect.running_instances)
    if running.note:
        metadata["deployed"] = running.note
    if running.keep:  # already running: a user data change would stop and start it
        return _Outcome(metadata, resolved, running.warning)
    require_mime = any(c.cfn_resource_type == "AWS::EKS::Nodegroup" for c in consumers)
    try:
        if bottlerocket.is_bottlerocket_user_data(resolved):
            # No boot-time sizing there: a mixed group's TOML gets its smallest type's limit.
            fixed = min(per_type.values()) if target is None and per_type else target
            new_user_data, limit, metadata["reason"] = _merge_bottlerocket(resolved, aspect, fixed, reason)
            metadata["limit"] = limit
            metadata.pop("perType", None)
        else:
            new_user_data = splice_user_data(
                resolved, render_block(aspect.block_inputs(target, source)), require_mime=require_mime
            )
    except Unsupported as e:
        message = f"cdk-audit-backlog: {resource.node.path} is not tuned: {e}."
        return _Outcome({"skipped": str(e)}, resolved, ("cdk-audit-backlog:skipped", message))
    return _Outcome(metadata, new_user_data, running.warning)


def _merge_bottlerocket(
    resolved: Any, aspect: AuditBacklog, target: Optional[int], reason: str
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
        user_data, merge = bottlerocket.merge_user_data(resolved, target, allow_lower=aspect.allow_lower)
    except bottlerocket.NotToml as e:
        raise Unsupported(f"Bottlerocket TOML settings the merge cannot keep intact: {e}") from None
    notes = "".join(f"; {note}" for note in merge.notes)
    return user_data, merge.limit, f"{reason}; Bottlerocket settings.boot.kernel-parameters{notes}"


def _skip_reason(resource: CfnResource, aspect: AuditBacklog) -> Optional[str]:
    for scope in reversed(resource.node.scopes) if _SkipMarker.used else []:
        marker = scope.node.try_find_child(_SKIP_ID)
        if isinstance(marker, _SkipMarker):
            return f"excluded with AuditBacklog.skip() on {scope.node.path or 'the app'}: {marker.reason}"
    if aspect.exclude is not None and aspect.exclude(resource):
        return "excluded by the aspect's exclude predicate"
    return None


def _is_windows(resource: CfnResource) -> bool:
    """The L2 around the resource knows its image's OS (the user data may not say, e.g. none at all)."""
    parent = resource.node.scope
    if isinstance(parent, (ec2.LaunchTemplate, ec2.Instance)):
        return getattr(parent, "os_type", None) == ec2.OperatingSystemType.WINDOWS
    return False


def _limit_from_types(
    resource: CfnResource, lt_data: Any, consumers: Sequence[CfnResource], policy: BacklogPolicy
) -> Tuple[Optional[int], List[str], Optional[int], str, Dict[str, int]]:
    """(limit or None for auto, types ordered smallest memory first, that memory, reason, limit per type).

    The limit per type is given only when the types are all known and map to more than one limit: then
    the limit is None (auto) and each machine computes its own from MemTotal with the same policy, where
    the smallest type's limit would leave the larger machines below the policy.
    """
    stack = Stack.of(resource)
    if resource.cfn_resource_type == "AWS::EC2::LaunchTemplate":
        own = _get(lt_data, "InstanceType")
        candidates: List[Any] = [own] if own is not None else []
        where = "the launch template"
        per_group = [_consumer_types(consumer) for consumer in consumers]
        group_types = [t for types in per_group for t in types]
        if group_types:
            # What EC2 launches: a group's overrides (or node group types) replace the template's own type;
            # a group without them launches the template's type (None, so auto, when it has none).
            candidates = group_types + ([own] if any(not types for types in per_group) else [])
            where = "the groups that use this launch template"
    else:
        candidates = [stack.resolve(resource.instance_type)]  # type: ignore[attr-defined]
        where = "the resource"
    if not candidates:
        return None, [], None, f"no instance type on {where}: computed at boot from MemTotal", {}
    known: List[Tuple[int, str]] = []
    for t in candidates:
        memory = instance_memory.memory_mib(t) if isinstance(t, str) else None
        if memory is None:
            shown = t if isinstance(t, str) else "a token or instance requirements"
            return (
                None, [], None, f"instance type {shown} of {where} has no known memory: computed at boot from MemTotal", {}
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
            return None, types, None, reason, {t: per_type[t] for t in types}
        reason = f"smallest memory among {', '.join(types)} ({where}), {memory} MiB"
    else:
        reason = f"instance type {smallest} ({memory} MiB) of {where}"
    return limit, types, memory, reason, {}


def _consumers(launch_template: CfnResource, aspect: AuditBacklog) -> List[CfnResource]:
    """The Auto Scaling groups and EKS node groups of the same stack that use ``launch_template``."""
    stack = Stack.of(launch_template)
    by_template = aspect._groups_by_template(stack)
    return by_template.get(stack.resolve(launch_template.logical_id), [])


def _groups_by_launch_template(stack: Stack) -> Dict[str, List[CfnResource]]:
    """Logical id of a launch template -> the groups of ``stack`` that use it (one walk of the stack)."""
    out: Dict[str, List[CfnResource]] = {}
    for c in stack.node.find_all():
        if not isinstance(c, CfnResource) or Stack.of(c) is not stack:
            continue
        kind = c.cfn_resource_type
        if kind == "AWS::AutoScaling::AutoScalingGroup":
            mixed = stack.resolve(c.mixed_instances_policy)  # type: ignore[attr-defined]
            specs = [
                stack.resolve(c.launch_template),  # type: ignore[attr-defined]
                _get(_get(mixed, "LaunchTemplate"), "LaunchTemplateSpecification"),
            ]
            ids = [_get(spec, "LaunchTemplateId") for spec in specs]
        elif kind == "AWS::EKS::Nodegroup":
            ids = [_get(stack.resolve(c.launch_template), "Id")]  # type: ignore[attr-defined]
        else:
            continue
        for ref in ids:
            if isinstance(ref, dict) and isinstance(ref.get("Ref"), str):
                out.setdefault(ref["Ref"], []).append(c)
    return out


def _consumer_types(consumer: CfnResource) -> List[Any]:
    """Instance types a group may launch; a non-string entry means "not known at synth time"."""
    stack = Stack.of(consumer)
    if consumer.cfn_resource_type == "AWS::EKS::Nodegroup":
        types = stack.resolve(consumer.instance_types)  # type: ignore[attr-defined]
        return list(types) if isinstance(types, list) and types else []
    mixed = stack.resolve(consumer.mixed_instances_policy)  # type: ignore[attr-defined]
    overrides = _get(_get(mixed, "LaunchTemplate"), "Overrides")
    # InstanceRequirements (attribute-based selection) cannot be known at synth: None, so auto.
    return [_get(o, "InstanceType") for o in overrides] if isinstance(overrides, list) else []


def _get(data: Any, name: str) -> Any:
    """A property of a resolved L1 struct: CDK resolves L1 structs with camelCase keys, raw overrides use
    CloudFormation's PascalCase; accept both."""
    if not isinstance(data, dict):
        return None
    camel = name[0].lower() + name[1:]
    return data[camel] if camel in data else data.get(name)
