"""``AuditBacklog.apply_to``'s machinery: one hidden leaf per scope, one walk per synthesis.

An aspect on a leaf construct is invoked for that leaf only, once per synthesis, in tree order: after the
scope's earlier children (its stacks) and the other aspects' visits of them, before ``prepareApp`` (which
hashes nested stack templates and finds references). That one visit lists the scope's constructs with one
``find_all`` call, reads what it needs of each launch with one bridge call, resolves a whole stack's worth of
values with one ``stack.resolve``, and writes each launch's ``UserData`` override and ``Metadata`` as concrete
values: no Python callback per construct, per resolve or per validation.

The glue that adds an ``AuditBacklogAssociation`` to every stack (``apply_to(..., association=...)``) lives
here too, so that the association never needs to know the aspect.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import jsii
from aws_cdk import AspectPriority, Aspects, CfnResource, IAspect, Stack
from constructs import Construct, IConstruct, IValidation

from .association import DEFAULT_ID, LAUNCH_TYPES, AssociationOptions, AuditBacklogAssociation
from .diagnostics import (
    HOOK_ID,
    TUNES_SCOPE,
    warn_about_inline_launch_specifications,
    warn_if_launch_is_out_of_reach,
)
from .launch_decision import AspectSettings, exclusion_reason
from .launch_reader import get, index_groups, key, launch_references, read_stack, scan
from .launch_tuning import Tuning
from .monitoring import MONITORING_ID, AuditBacklogMonitoring, MonitoringOptions
from .registry import AppRegistry

__all__ = ["Hook", "add_associations", "monitoring_of"]


class Hook(Construct):
    """Hidden leaf under a scope given to ``AuditBacklog.apply_to``, with an aspect of its own."""

    def __init__(self, scope: IConstruct, aspect: AspectSettings) -> None:
        super().__init__(scope, HOOK_ID)
        self.scope_ = scope
        self.aspect = aspect
        self._depth: Optional[int] = None
        # Launches whose user data holds a Ref or GetAtt, by stack: read again after prepareApp (see
        # _Recheck).
        self.recheck: Dict[str, Tuple[Stack, List[Tuning]]] = {}
        Aspects.of(self).add(_HookVisit(self), priority=AspectPriority.MUTATING)
        self.node.add_validation(_Recheck(self))

    @property
    def depth(self) -> int:
        """Depth of the scope apply_to was given (compared with plain aspects' scopes: deeper is nearer)."""
        if self._depth is None:
            self._depth = len(self.scope_.node.scopes) - 1
        return self._depth


setattr(Hook, TUNES_SCOPE, True)  # what diagnostics.is_covered looks for, as on AuditBacklog


@jsii.implements(IValidation)
class _Recheck:
    """After ``prepareApp``: the user data of a launch that refers to another stack's resource.

    The hook resolves user data during the aspect phase, where CDK has not yet replaced a reference to another
    stack's resource (an ``Fn::ImportValue`` once ``prepareApp`` has created the export) and it still reads as
    a plain ``Ref``. ``prepareApp`` makes a stack that imports depend on the exporter, so the launches of a
    stack with dependencies (or a nested stack) whose user data held a ``Ref`` or ``GetAtt`` are read again
    here, one batch per stack, and rewritten where the value changed. (A nested stack's template asset hash
    was taken before: such a launch is reported, not rewritten.)"""

    def __init__(self, hook: Hook) -> None:
        self._hook = hook

    def validate(self) -> List[str]:
        errors: List[str] = []
        pending, self._hook.recheck = self._hook.recheck, {}
        for stack, tunings in pending.values():
            if not stack.dependencies and not stack.nested:
                continue
            launches, _ = read_stack(stack, [(t.resource, t.kind) for t in tunings], [])
            for tuning, fresh in zip(tunings, launches):
                assert tuning.launch is not None
                if fresh.user_data == tuning.launch.user_data:
                    continue
                if stack.nested:
                    errors.append(
                        f"cdk-audit-backlog: the user data of {tuning.resource.node.path} refers to a "
                        "resource of another stack, which CDK resolves only after the nested stack's "
                        "template was hashed; pass the value as a parameter of the nested stack, or exclude "
                        "this launch with AuditBacklog.skip()."
                    )
                    continue
                tuning.redo(fresh)
        return errors


@jsii.implements(IAspect)
class _HookVisit:
    def __init__(self, hook: Hook) -> None:
        self._hook = hook

    def visit(self, node: IConstruct) -> None:
        if node is self._hook:
            _tune_scope(self._hook)


def _tune_scope(hook: Hook) -> None:
    """Decides and writes every launch under the hook's scope that is not decided yet (Stages beneath it
    have hooks of their own and are synthesized before it)."""
    aspect = hook.aspect
    registry = AppRegistry.of(hook)
    found = scan(hook.scope_)
    for stack, found_launches, found_groups in found.stacks:
        pending = [(r, k) for r, k in found_launches if not Tuning.of(r, k, registry).decided]
        unchecked = [(g, k) for g, k in found_groups if key(g) not in registry.checked_groups]
        if not pending and not unchecked:
            continue
        needs_groups = (
            unchecked
            or any(k == "AWS::EC2::LaunchTemplate" for _, k in pending)
            or (getattr(aspect, "monitoring", None) is not None and bool(pending))
        )
        launches, groups = read_stack(stack, pending, found_groups if needs_groups else [])
        # Groups whose resolved launch template is a Ref to one read here are in reach; any other is checked
        # the exact way, through its reference token.
        reachable = {launch.logical_id for launch in launches if launch.logical_id}
        by_template = index_groups(groups)
        for group in groups:
            if key(group.resource) in registry.checked_groups:
                continue
            registry.checked_groups.add(key(group.resource))
            if found.skipped.get(key(group.resource)) or exclusion_reason(group.resource, aspect):
                continue
            if not _refers_to(group.cfn_resource_type, group.props, reachable):
                warn_if_launch_is_out_of_reach(group.resource, group.cfn_resource_type, group.raw)
            warn_about_inline_launch_specifications(group.resource, group.cfn_resource_type, group.raw)
        for launch in launches:
            if launch.cfn_resource_type == "AWS::EC2::LaunchTemplate":
                launch.consumers = by_template.get(launch.logical_id or "", [])
            launch.skipped = found.skipped.get(key(launch.resource))
            tuning = Tuning.of(launch.resource, launch.cfn_resource_type, registry)
            tuning.claim(aspect, depth=hook.depth)
            tuning.settle(launch)
            tuning.write()
            if _has_reference(launch.user_data):
                hook.recheck.setdefault(key(stack), (stack, []))[1].append(tuning)
        _monitor(stack, launches, groups, found.skipped)


def _monitor(stack: Stack, launches: List[Any], groups: List[Any], skipped: Dict[str, str]) -> None:
    """With monitoring on (on the aspect that won each launch): the stack's ``AuditBacklogMonitoring`` watches
    the Instances tuned here and the Auto Scaling groups that launch from a launch template or configuration
    tuned here, and (``grant_permissions``) the policy goes on each tuned launch's role."""
    tuned_ids = set()
    monitoring: Optional[AuditBacklogMonitoring] = None
    options: Optional[MonitoringOptions] = None
    registry = AppRegistry.of(stack)
    for launch in launches:
        tuning = Tuning.of(launch.resource, launch.cfn_resource_type, registry)
        options = getattr(tuning.winner, "monitoring", None)
        if options is None or "skipped" in tuning.decision().metadata:
            continue
        monitoring = monitoring or monitoring_of(stack, options)
        if monitoring is None:
            return
        if monitoring.policy is not None:
            monitoring.grant(launch.resource)
        if launch.cfn_resource_type == "AWS::EC2::Instance":
            monitoring.watch(launch.resource, launch.resource.node.scope)
        elif launch.logical_id:
            tuned_ids.add(launch.logical_id)
    if monitoring is None or not tuned_ids:
        return
    for group in groups:
        if group.cfn_resource_type != "AWS::AutoScaling::AutoScalingGroup":
            continue
        if skipped.get(key(group.resource)):
            continue
        refs = launch_references(group.cfn_resource_type, group.props, get).all()
        if any(isinstance(ref, dict) and ref.get("Ref") in tuned_ids for ref in refs):
            monitoring.watch(group.resource, group.resource.node.scope)


def monitoring_of(stack: Stack, options: Optional[MonitoringOptions]) -> Optional[AuditBacklogMonitoring]:
    """The stack's ``AuditBacklogMonitoring`` (id ``AuditBacklogMonitoring``), added with ``options`` the
    first time; None where ``options`` is None or the user has another construct with that id."""
    existing = stack.node.try_find_child(MONITORING_ID)
    if isinstance(existing, AuditBacklogMonitoring):
        return existing
    if existing is not None or options is None:
        return None
    return AuditBacklogMonitoring.from_options(stack, MONITORING_ID, options)


def _refers_to(kind: str, props: Any, launch_ids: set) -> bool:
    """Whether a group's resolved launch template / configuration is a Ref to one of ``launch_ids``."""
    refs = launch_references(kind, props, get).all()
    return any(isinstance(ref, dict) and ref.get("Ref") in launch_ids for ref in refs)


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


def add_associations(
    scope: IConstruct, aspect: AspectSettings, association: Union[bool, AssociationOptions]
) -> List[AuditBacklogAssociation]:
    """``AuditBacklog.apply_to(..., association=...)``: one :class:`AuditBacklogAssociation` in every stack
    under ``scope`` (Stages and nested stacks included) that holds an EC2 launch, with the aspect's tuning
    options. A stack that has one already (an earlier call, or the user's own with the same id) is left as it
    is."""
    if association is True:
        fleet = AssociationOptions()
    elif isinstance(association, AssociationOptions):
        fleet = association
    else:
        raise ValueError(f"association must be True, False or an AssociationOptions, got {association!r}")
    stacks: Dict[int, Stack] = {}
    for c in scope.node.find_all():
        if isinstance(c, CfnResource) and c.cfn_resource_type in LAUNCH_TYPES:
            stack = Stack.of(c)
            stacks.setdefault(id(stack), stack)
    added = []
    for stack in stacks.values():
        if stack.node.try_find_child(DEFAULT_ID) is None:
            added.append(AuditBacklogAssociation.from_options(stack, DEFAULT_ID, aspect.options, fleet))
    return added
