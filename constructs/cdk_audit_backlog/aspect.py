"""``AuditBacklog``: tunes every EC2 Linux launch under a scope.

Two ways in, one decision:

1. ``AuditBacklog.apply_to(scope)`` (the fast path) adds no per-construct aspect. It puts one hidden leaf
   construct (:class:`_Hook`) under the scope and under every Stage beneath it, with an aspect on that leaf
   only. CDK visits a scope's children in order, so the leaf is visited once per synthesis, after the
   constructs created before it and after the other aspects have visited them (they may add launches or user
   data lines), and before ``prepareApp`` (which hashes nested stack templates and finds references). That one
   visit lists the scope's constructs with one ``find_all`` call, reads what it needs of each launch with one
   bridge call, resolves a whole stack's worth of values with one ``stack.resolve``, and writes each launch's
   ``UserData`` override and ``Metadata`` as concrete values: no Python callback per construct, per resolve or
   per validation.
2. ``Aspects.of(scope).add(AuditBacklog())`` (the plain path, slower: one jsii callback per construct of the
   tree) claims each launch L1 it visits and attaches lazy values that decide at synthesis, so lines added to
   the user data after the aspect (until synthesis) are still kept.

Either way a launch is decided once (a registry keyed by the L1, :class:`_Tuning`): the claim of the aspect
nearest to the resource wins; the instance type (or the types of the Auto Scaling groups / node groups that use
a launch template) gives the memory, the policy gives the limit, and :mod:`.splice` puts the rendered block into
the user data the user's code produced. Launches that cannot be tuned safely (Windows, Bottlerocket, user data
behind a token) keep their user data byte for byte, get ``{"skipped": reason}`` Metadata and a warning with a
stable id. User data over 16 KB with the block fails synth (a validation on that resource only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
from .splice import Unsupported, leading_text, literal_bytes, splice_user_data, user_data_kind
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
# The few properties read from each kind (camelCase, as CDK keeps L1 properties before rendering).
_GROUP_FIELDS = {
    "AWS::AutoScaling::AutoScalingGroup": ("launchTemplate", "mixedInstancesPolicy", "launchConfigurationName"),
    "AWS::EKS::Nodegroup": ("launchTemplate", "instanceTypes"),
}
_HOOK_ID = "CdkAuditBacklog"
_SKIP_ID = "CdkAuditBacklogSkip"


@dataclass(frozen=True)
class _Outcome:
    metadata: Dict[str, Any]
    user_data: Any  # resolved UserData value to emit
    warning: Optional[Tuple[str, str]] = None  # (id, message)
    keeps_user_data: bool = False  # skipped, or an instance already running: its own UserData stays as is


@jsii.implements(IAspect)
class AuditBacklog:
    """Sizes the kernel audit backlog of every EC2 Linux launch under the scope it is added to.

    Add it to an app with :meth:`apply_to` (reaches Stages too, and costs no Python callback per construct), or
    ``Aspects.of(scope).add(AuditBacklog())`` (the plain aspect: one jsii callback per construct of the tree).

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
        # Plain path only: per-stack index of which groups use which launch template, built once at synthesis
        # (when the tree is final) by the first launch template that needs it.
        self._group_index: Dict[str, Dict[str, List[_Group]]] = {}

    def _groups_by_template(self, stack: Stack) -> Dict[str, List["_Group"]]:
        key = _key(stack)
        if key not in self._group_index:
            self._group_index[key] = _groups_by_launch_template(stack)
        return self._group_index[key]

    # -- entry points ------------------------------------------------------------------------------

    @classmethod
    def apply_to(cls, scope: IConstruct, *, association: Any = False, **options: Any) -> "AuditBacklog":
        """Tunes every launch under ``scope`` and under every Stage beneath it, however deep, with one
        ``AuditBacklog(**options)``.

        CDK does not carry an app's aspects into Stages (each Stage is its own cloud assembly), so CDK
        Pipelines apps need this. It adds no aspect to the scope itself (that would cost a Python callback per
        construct of the tree): one hidden leaf per scope and Stage does the work once per synthesis. Call it
        after the app's stacks and stages exist, just before ``app.synth()``; a Stage created later is not
        reached. Calling it again adds nothing twice; a scope that already has an ``AuditBacklog`` aspect
        keeps it.

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
            if not _is_covered(target):
                _Hook(target, aspect)
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

    # -- the plain aspect --------------------------------------------------------------------------

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            if isinstance(node, Stage) and node.node.scope is None:
                _warn_about_unreached_stages(node, self)
            return
        kind = node.cfn_resource_type
        if kind in _USER_DATA_PATH:
            tuning = _Tuning.of(node, kind)
            tuning.claim(self)
            tuning.attach_lazily()
        elif kind in _CONSUMER_TYPES and not _skip_reason(node, self):
            _warn_if_launch_is_out_of_reach(node, kind, node._cfn_properties)

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


def _is_covered(stage: IConstruct) -> bool:
    """Whether ``stage`` already has an AuditBacklog: a plain aspect on it, or apply_to's hidden leaf."""
    if any(isinstance(a, AuditBacklog) for a in Aspects.of(stage).all):
        return True
    return isinstance(stage.node.try_find_child(_HOOK_ID), _Hook)


def _distance_to_aspect(node: IConstruct, aspect: AuditBacklog) -> int:
    """Depth of the nearest scope (the node itself or an ancestor) that carries ``aspect``; deeper is nearer."""
    scopes = node.node.scopes  # root first
    for depth in range(len(scopes) - 1, -1, -1):
        if any(a is aspect for a in Aspects.of(scopes[depth]).all):
            return depth
    return -1  # invoked through a path we cannot see (e.g. a Stage's inherited list): farthest


def _warn_if_launch_is_out_of_reach(group: CfnResource, kind: str, raw: Any) -> None:
    """A group whose launch template or configuration is not a resource of this app cannot be tuned: say so.

    ``raw`` is the group's unresolved properties (``_cfn_properties``: tokens still tokens)."""
    if kind == "AWS::EKS::Nodegroup":
        spec = _raw(raw, "launchTemplate")
        if spec is None:
            reason: Optional[str] = (
                "the node group has no launch template, so EKS writes its user data; give it a launch template"
            )
        else:
            reason = _out_of_reach([_raw(spec, "id"), _raw(spec, "name")])
    else:
        spec = _raw(raw, "launchTemplate")
        if spec is None:
            mixed_lt = _raw(_raw(raw, "mixedInstancesPolicy"), "launchTemplate")
            spec = _raw(mixed_lt, "launchTemplateSpecification")
        refs = [_raw(spec, "launchTemplateId"), _raw(spec, "launchTemplateName")]
        refs.append(_raw(raw, "launchConfigurationName"))
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
    unreached = [c for c in app.node.find_all() if c is not app and isinstance(c, Stage) and not _is_covered(c)]
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


# -- apply_to's path: one hook per scope, one walk per synthesis ----------------------------------------


class _Hook(Construct):
    """Hidden leaf under a scope given to :meth:`AuditBacklog.apply_to`, with an aspect of its own.

    An aspect on a leaf is invoked for that leaf only, once per synthesis, in tree order: after the scope's
    earlier children (its stacks) and the other aspects' visits of them, before ``prepareApp``."""

    def __init__(self, scope: IConstruct, aspect: AuditBacklog) -> None:
        super().__init__(scope, _HOOK_ID)
        self.scope_ = scope
        self.aspect = aspect
        self._depth: Optional[int] = None
        # Launches whose user data holds a Ref or GetAtt, by stack: read again after prepareApp (see _Recheck).
        self.recheck: Dict[str, Tuple[Stack, List[_Tuning]]] = {}
        Aspects.of(self).add(_HookVisit(self), priority=AspectPriority.MUTATING)
        self.node.add_validation(_Recheck(self))

    @property
    def depth(self) -> int:
        """Depth of the scope apply_to was given (compared with plain aspects' scopes: deeper is nearer)."""
        if self._depth is None:
            self._depth = len(self.scope_.node.scopes) - 1
        return self._depth


@jsii.implements(IValidation)
class _Recheck:
    """After ``prepareApp``: the user data of a launch that refers to another stack's resource.

    The hook resolves user data during the aspect phase, where CDK has not yet replaced a reference to another
    stack's resource (an ``Fn::ImportValue`` once ``prepareApp`` has created the export) and it still reads as a
    plain ``Ref``. ``prepareApp`` makes a stack that imports depend on the exporter, so the launches of a stack
    with dependencies (or a nested stack) whose user data held a ``Ref`` or ``GetAtt`` are read again here, one
    batch per stack, and rewritten where the value changed. (A nested stack's template asset hash was taken
    before: such a launch is reported, not rewritten.)"""

    def __init__(self, hook: _Hook) -> None:
        self._hook = hook

    def validate(self) -> List[str]:
        errors: List[str] = []
        pending, self._hook.recheck = self._hook.recheck, {}
        for stack, tunings in pending.values():
            if not stack.dependencies and not stack.nested:
                continue
            launches, _ = _read_stack(stack, [(t.resource, t.kind) for t in tunings], [])
            for tuning, fresh in zip(tunings, launches):
                if fresh.user_data == tuning.launch.user_data:
                    continue
                if stack.nested:
                    errors.append(
                        f"cdk-audit-backlog: the user data of {tuning.resource.node.path} refers to a resource of "
                        f"another stack, which CDK resolves only after the nested stack's template was hashed; "
                        f"pass the value as a parameter of the nested stack, or exclude this launch with "
                        f"AuditBacklog.skip()."
                    )
                    continue
                tuning.redo(fresh)
        return errors


@jsii.implements(IAspect)
class _HookVisit:
    def __init__(self, hook: _Hook) -> None:
        self._hook = hook

    def visit(self, node: IConstruct) -> None:
        if node is self._hook:
            _tune_scope(self._hook)


def _tune_scope(hook: _Hook) -> None:
    """Decides and writes every launch under the hook's scope that is not decided yet (Stages beneath it
    have hooks of their own and are synthesized before it)."""
    aspect = hook.aspect
    scan = _scan(hook.scope_)
    for stack, found_launches, found_groups in scan.stacks:
        pending = [(r, k) for r, k in found_launches if not _Tuning.of(r, k).decided]
        unchecked = [(g, k) for g, k in found_groups if _key(g) not in _CHECKED_GROUPS]
        if not pending and not unchecked:
            continue
        needs_groups = unchecked or any(k == "AWS::EC2::LaunchTemplate" for _, k in pending)
        launches, groups = _read_stack(stack, pending, found_groups if needs_groups else [])
        # Groups whose resolved launch template is a Ref to one read here are in reach; any other is checked
        # the exact way, through its reference token.
        reachable = {launch.logical_id for launch in launches if launch.logical_id}
        by_template = _index_groups(groups)
        for group in groups:
            if _key(group.resource) in _CHECKED_GROUPS:
                continue
            _CHECKED_GROUPS.add(_key(group.resource))
            if scan.skipped.get(_key(group.resource)) or (aspect.exclude is not None and aspect.exclude(group.resource)):
                continue
            if not _refers_to(group, reachable):
                _warn_if_launch_is_out_of_reach(group.resource, group.cfn_resource_type, group.raw)
        for launch in launches:
            if launch.cfn_resource_type == "AWS::EC2::LaunchTemplate":
                launch.consumers = by_template.get(launch.logical_id or "", [])
            launch.skipped = scan.skipped.get(_key(launch.resource))
            tuning = _Tuning.of(launch.resource, launch.cfn_resource_type)
            tuning.claim(aspect, depth=hook.depth)
            tuning.settle(launch, tuning.winner)
            tuning.write()
            if _has_reference(launch.user_data):
                hook.recheck.setdefault(_key(stack), (stack, []))[1].append(tuning)


_CHECKED_GROUPS: set = set()  # keys of groups whose reach was checked (warned once, not at every synthesis)


@dataclass
class _Scan:
    stacks: List[Tuple[Stack, List[Tuple[CfnResource, str]], List[Tuple[CfnResource, str]]]]
    skipped: Dict[str, str]  # key of a launch or group under a skip() scope -> reason


def _key(construct: Any) -> str:
    """A stable key for a JS object: its jsii reference. (The Python proxy of an object created on the JS side,
    e.g. an L2's L1, may be dropped and made anew between two calls, so ``id()`` is not stable.)"""
    return construct.__jsii_ref__.ref


_KIND_CACHE: Dict[type, Optional[str]] = {}


def _kind_of(node: IConstruct) -> Optional[str]:
    """The resource type of a launch or group L1; None for any other construct.

    Read once per Python class from the generated L1's ``CFN_RESOURCE_TYPE_NAME`` (several classes carry one
    type: ``aws_eks`` and ``aws_eks_v2`` both have a ``CfnNodegroup``); only a generic ``CfnResource`` costs a
    bridge call per instance."""
    if not isinstance(node, CfnResource):
        return None
    klass = type(node)
    if klass not in _KIND_CACHE:
        _KIND_CACHE[klass] = getattr(klass, "CFN_RESOURCE_TYPE_NAME", None)
    kind = _KIND_CACHE[klass] or node.cfn_resource_type
    return kind if kind in _USER_DATA_PATH or kind in _CONSUMER_TYPES else None


def _scan(root: IConstruct) -> _Scan:
    """Launches and groups under ``root`` by stack, in a handful of bridge calls (not one per construct).

    Constructs inside a Stage beneath ``root`` are left out: that Stage has a hook of its own."""
    nodes: List[IConstruct] = [root]
    for child in root.node.children:
        if not isinstance(child, Stage):
            nodes.extend(child.node.find_all())  # the child and everything under it, depth first
    inner_stages = [c for c in nodes[1:] if isinstance(c, Stage)]  # a Stage under a stack (CDK Pipelines)
    if inner_stages:
        inside: set = set()
        for stage in inner_stages:
            if _key(stage) not in inside:
                inside.update(_key(c) for c in stage.node.find_all())
        nodes = [c for c in nodes if _key(c) not in inside]

    # Which stack a resource belongs to, without asking per resource: the subtree of a stack that has no stack
    # above it is contiguous in depth-first order and holds no other such stack, so a resource belongs to the
    # last one before it, unless it is inside a stack within a stack (a NestedStack), listed separately.
    inner_owner: Dict[str, Stack] = {}
    for c in nodes:
        if isinstance(c, Stack) and any(isinstance(s, Stack) for s in c.node.scopes[:-1]):
            inner_owner.update((_key(x), c) for x in c.node.find_all())  # depth first: deeper stacks last
    by_stack: Dict[str, Tuple[Stack, List[Tuple[CfnResource, str]], List[Tuple[CfnResource, str]]]] = {}
    markers: List[_SkipMarker] = []
    top: Optional[Stack] = None
    for c in nodes:
        if isinstance(c, Stack) and _key(c) not in inner_owner:
            top = c
        if isinstance(c, _SkipMarker):
            markers.append(c)
            continue
        kind = _kind_of(c)
        if kind is None:
            continue
        stack = inner_owner.get(_key(c)) or top
        if stack is None:
            continue
        entry = by_stack.setdefault(_key(stack), (stack, [], []))
        (entry[1] if kind in _USER_DATA_PATH else entry[2]).append((c, kind))  # type: ignore[arg-type]

    skipped: Dict[str, str] = {}
    for marker in markers:  # depth first: a marker nearer to the resource comes later and wins
        scope = marker.node.scope
        reason = f"excluded with AuditBacklog.skip() on {scope.node.path or 'the app'}: {marker.reason}"
        skipped.update((_key(x), reason) for x in scope.node.find_all())
    return _Scan(list(by_stack.values()), skipped)


# -- reading launches and groups ---------------------------------------------------------------------


@dataclass
class _Group:
    """An Auto Scaling group or EKS node group, as far as choosing a launch template's limit needs it."""

    resource: CfnResource
    cfn_resource_type: str
    props: Any  # resolved: launchTemplate, mixedInstancesPolicy, launchConfigurationName / instanceTypes
    raw: Any  # unresolved properties (tokens still tokens), for the out-of-reach check


@dataclass
class _Launch:
    """One launch L1 and what deciding needs of it."""

    resource: CfnResource
    cfn_resource_type: str
    data: Any  # resolved {userData, instanceType} (of the LaunchTemplateData for a launch template)
    logical_id: Optional[str] = None  # launch templates and configurations (groups refer to them by it)
    consumers: List[_Group] = field(default_factory=list)
    skipped: Optional[str] = None  # reason given to AuditBacklog.skip() on a scope above it
    stack: Optional[Stack] = None

    @property
    def user_data(self) -> Any:
        return _get(self.data, "UserData")


def _read_stack(
    stack: Stack, launches: Sequence[Tuple[CfnResource, str]], groups: Sequence[Tuple[CfnResource, str]]
) -> Tuple[List[_Launch], List[_Group]]:
    """Reads launches and groups of one stack: one bridge call each for its properties (``_cfn_properties``
    comes back by value in one message, where a struct property such as ``launch_template_data`` costs one
    message per field of the struct), one per launch template or configuration for its logical id, and one
    ``stack.resolve`` for all of them."""
    raws = [r._cfn_properties for r, _ in launches]  # type: ignore[attr-defined]
    group_raws = [g._cfn_properties for g, _ in groups]  # type: ignore[attr-defined]
    wanted: List[Any] = []
    for (_, kind), raw in zip(launches, raws):
        data = _get(raw, "LaunchTemplateData") if kind == "AWS::EC2::LaunchTemplate" else raw
        if isinstance(data, dict):  # only what deciding reads: tag specifications and the like stay unresolved
            wanted.append({"userData": _get(data, "UserData"), "instanceType": _get(data, "InstanceType")})
        else:
            wanted.append(data)  # a token or a struct object read earlier through its typed getter: all of it
    for (_, kind), raw in zip(groups, group_raws):
        wanted.append({name: _get(raw, name) for name in _GROUP_FIELDS[kind]})
    named = [i for i, (_, kind) in enumerate(launches) if kind != "AWS::EC2::Instance"]
    wanted.extend(launches[i][0].logical_id for i in named)
    resolved = stack.resolve(wanted) if wanted else []
    out = [_Launch(r, kind, resolved[i], stack=stack) for i, (r, kind) in enumerate(launches)]
    for n, i in enumerate(named):
        out[i].logical_id = resolved[len(launches) + len(groups) + n]
    read_groups = [
        _Group(g, kind, resolved[len(launches) + i], group_raws[i]) for i, (g, kind) in enumerate(groups)
    ]
    return out, read_groups


def _read_one(resource: CfnResource, kind: str, aspect: AuditBacklog) -> _Launch:
    """The plain path: one launch, read when its lazy values are first resolved."""
    stack = Stack.of(resource)
    (launch,), _ = _read_stack(stack, [(resource, kind)], [])
    if kind == "AWS::EC2::LaunchTemplate":
        launch.consumers = aspect._groups_by_template(stack).get(launch.logical_id or "", [])
    launch.skipped = _skip_marker_reason(resource)
    return launch


def _refers_to(group: _Group, launch_ids: set) -> bool:
    """Whether the group's resolved launch template / configuration is a Ref to one of ``launch_ids``."""
    props = group.props
    specs = [_get(props, "LaunchTemplate"), _get(_get(_get(props, "MixedInstancesPolicy"), "LaunchTemplate"), "LaunchTemplateSpecification")]
    refs = [_get(spec, "LaunchTemplateId") or _get(spec, "Id") for spec in specs]
    refs.append(_get(props, "LaunchConfigurationName"))
    return any(isinstance(ref, dict) and ref.get("Ref") in launch_ids for ref in refs)


# -- the decision, kept once per launch ----------------------------------------------------------------


class _Tuning:
    """What was decided for one launch L1: the claims of the aspects that reached it and the outcome.

    A plain Python registry keyed by the L1's jsii reference, not a hidden construct (one construct per launch
    cost several bridge calls and showed in every tree)."""

    _registry: Dict[str, "_Tuning"] = {}

    @classmethod
    def of(cls, resource: CfnResource, kind: str) -> "_Tuning":
        key = _key(resource)
        existing = cls._registry.get(key)
        if existing is None:
            existing = cls._registry[key] = cls(resource, kind)
        return existing

    def __init__(self, resource: CfnResource, kind: str) -> None:
        self.resource = resource
        self.kind = kind
        self.claims: List[Tuple[AuditBacklog, Optional[int]]] = []  # (aspect, depth of apply_to's scope)
        self._outcome: Optional[_Outcome] = None
        self.launch: Optional[_Launch] = None  # what the outcome was decided from
        self._lazy = False
        self._validated = False

    @property
    def decided(self) -> bool:
        return self._outcome is not None

    def claim(self, aspect: AuditBacklog, depth: Optional[int] = None) -> None:
        if not any(a is aspect for a, _ in self.claims):
            self.claims.append((aspect, depth))

    @property
    def winner(self) -> AuditBacklog:
        if len(self.claims) == 1:
            return self.claims[0][0]
        # Nearest scope wins; between aspects on the same scope, the one added (and so visiting) last. An
        # apply_to claim is made after the plain aspects' visits but stands for an aspect that, added to its
        # scope with a mutating priority, would have visited first: it ranks before them on the same scope.
        ranked = [
            (_distance_to_aspect(self.resource, a) if depth is None else depth, -1 if depth is not None else i, a)
            for i, (a, depth) in enumerate(self.claims)
        ]
        return max(ranked, key=lambda c: (c[0], c[1]))[2]

    def attach_lazily(self) -> None:
        """The plain path: lazy UserData and Metadata, decided when synthesis first resolves them."""
        if self._lazy or self.decided:
            return
        self._lazy = True
        self.resource.add_property_override(_USER_DATA_PATH[self.kind], _Producer(self, "user_data"))
        self.resource.add_metadata(METADATA_KEY, _Producer(self, "metadata"))
        self._add_validation()

    def outcome(self) -> _Outcome:
        if self._outcome is None:
            winner = self.winner
            self.settle(_read_one(self.resource, self.kind, winner), winner)
        assert self._outcome is not None
        return self._outcome

    def settle(self, launch: _Launch, aspect: AuditBacklog) -> _Outcome:
        if self._outcome is None:
            self.launch = launch
            self._outcome = _decide(launch, aspect)
            if self._outcome.warning:
                Annotations.of(self.resource).add_warning_v2(*self._outcome.warning)
        return self._outcome

    def write(self) -> None:
        """apply_to's path: the decided values as plain overrides (no callback at synthesis); a skipped launch
        (or a running instance kept as is) keeps its own UserData property untouched."""
        outcome = self.outcome()
        if not outcome.keeps_user_data:
            self.resource.add_property_override(_USER_DATA_PATH[self.kind], outcome.user_data)
        self.resource.add_metadata(METADATA_KEY, outcome.metadata)
        if literal_bytes(outcome.user_data) > EC2_USER_DATA_LIMIT:
            self._add_validation()

    def redo(self, fresh: _Launch) -> None:
        """The same decision on user data read again after prepareApp (see _Recheck), written again."""
        self.launch = replace(self.launch, data=fresh.data)
        self._outcome = _decide(self.launch, self.winner)
        self.write()

    def _add_validation(self) -> None:
        if not self._validated:
            self._validated = True
            self.resource.node.add_validation(_Validation(self))


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
    """Lazy value of the overridden UserData or of the Metadata (plain path), both from the one cached outcome.

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


def _decide(launch: _Launch, aspect: AuditBacklog) -> _Outcome:
    resource = launch.resource
    lt_data = launch.data  # resolved UserData and InstanceType (of the LaunchTemplateData for a launch template)
    resolved = launch.user_data
    skip_reason = launch.skipped or _skip_reason(resource, aspect, markers=False)
    if skip_reason:  # the user's own choice: recorded in Metadata, no warning
        return _Outcome({"skipped": skip_reason}, resolved, keeps_user_data=True)
    if not _is_shell_script(resolved) and _is_windows(resource):
        reason = "Windows launch (no Linux audit subsystem)"
        message = f"cdk-audit-backlog: {resource.node.path} is not tuned: {reason}."
        return _Outcome({"skipped": reason}, resolved, ("cdk-audit-backlog:skipped", message), keeps_user_data=True)

    consumers = launch.consumers
    if aspect.backlog_limit is not None:
        target: Optional[int] = aspect.backlog_limit
        types, memory, reason, per_type = [], None, "backlog_limit set on the aspect", {}
    else:
        target, types, memory, reason, per_type = _limit_from_types(launch, lt_data, consumers, aspect.policy)
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
        return _Outcome(metadata, resolved, running.warning, keeps_user_data=True)
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
        return _Outcome({"skipped": str(e)}, resolved, ("cdk-audit-backlog:skipped", message), keeps_user_data=True)
    return _Outcome(metadata, new_user_data, running.warning if running is not None else None)


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


def _skip_reason(resource: CfnResource, aspect: AuditBacklog, markers: bool = True) -> Optional[str]:
    if markers:
        reason = _skip_marker_reason(resource)
        if reason:
            return reason
    if aspect.exclude is not None and aspect.exclude(resource):
        return "excluded by the aspect's exclude predicate"
    return None


def _skip_marker_reason(resource: IConstruct) -> Optional[str]:
    for scope in reversed(resource.node.scopes) if _SkipMarker.used else []:
        marker = scope.node.try_find_child(_SKIP_ID)
        if isinstance(marker, _SkipMarker):
            return f"excluded with AuditBacklog.skip() on {scope.node.path or 'the app'}: {marker.reason}"
    return None


def _has_reference(value: Any) -> bool:
    """Whether a resolved value holds a Ref (other than a pseudo parameter) or an Fn::GetAtt."""
    if isinstance(value, dict):
        ref = value.get("Ref")
        if (isinstance(ref, str) and not ref.startswith("AWS::")) or "Fn::GetAtt" in value:
            return True
        return any(_has_reference(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_reference(v) for v in value)
    return False


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


def _limit_from_types(
    resource: _Launch, lt_data: Any, consumers: Sequence[_Group], policy: BacklogPolicy
) -> Tuple[Optional[int], List[str], Optional[int], str, Dict[str, int]]:
    """(limit or None for auto, types ordered smallest memory first, that memory, reason, limit per type).

    The limit per type is given only when the types are all known and map to more than one limit: then
    the limit is None (auto) and each machine computes its own from MemTotal with the same policy, where
    the smallest type's limit would leave the larger machines below the policy.
    """
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
        candidates = [_get(lt_data, "InstanceType")]
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


def _index_groups(groups: Iterable[_Group]) -> Dict[str, List[_Group]]:
    """Logical id of a launch template -> the groups (of one stack) that use it."""
    out: Dict[str, List[_Group]] = {}
    for group in groups:
        props = group.props
        if group.cfn_resource_type == "AWS::AutoScaling::AutoScalingGroup":
            specs = [
                _get(props, "LaunchTemplate"),
                _get(_get(_get(props, "MixedInstancesPolicy"), "LaunchTemplate"), "LaunchTemplateSpecification"),
            ]
            ids = [_get(spec, "LaunchTemplateId") for spec in specs]
        else:
            ids = [_get(_get(props, "LaunchTemplate"), "Id")]
        for ref in ids:
            if isinstance(ref, dict) and isinstance(ref.get("Ref"), str):
                out.setdefault(ref["Ref"], []).append(group)
    return out


def _groups_by_launch_template(stack: Stack) -> Dict[str, List[_Group]]:
    """Logical id of a launch template -> the groups of ``stack`` that use it (the plain path: one walk)."""
    found = []
    for c in stack.node.find_all():
        kind = _kind_of(c)
        if kind in _CONSUMER_TYPES and Stack.of(c) is stack:
            found.append((c, kind))
    _, groups = _read_stack(stack, [], found)
    return _index_groups(groups)


def _consumer_types(consumer: _Group) -> List[Any]:
    """Instance types a group may launch; a non-string entry means "not known at synth time"."""
    if consumer.cfn_resource_type == "AWS::EKS::Nodegroup":
        types = _get(consumer.props, "InstanceTypes")
        return list(types) if isinstance(types, list) and types else []
    mixed = _get(consumer.props, "MixedInstancesPolicy")
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


def _raw(data: Any, name: str) -> Any:
    """A field of an unresolved L1 struct: a dict (camelCase keys) or, where someone read the struct through
    its typed getter before, a jsii struct object (snake_case attributes)."""
    if data is None or isinstance(data, dict):
        return _get(data, name)
    snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in name)
    return getattr(data, snake, None)
