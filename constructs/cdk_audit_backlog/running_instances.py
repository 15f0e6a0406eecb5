"""What the aspect does to the user data of an ``AWS::EC2::Instance`` that may already run.

CloudFormation: changing an Instance's ``UserData`` "stops and then starts the instance; however, Amazon EC2
doesn't automatically run the updated UserData". So adding the block to a running instance costs a stop/start
and tunes nothing. Synthesis cannot see the account; like CDK's own lookups, the answer to "what exists
already" is context cached in ``cdk.context.json``: ``cdk-audit-backlog impact --record`` writes, per deployed
stack, the logical ids of the Instances its deployed template holds, under

    cdk-audit-backlog:deployed-instances:account=ACCOUNT:region=REGION:stack=STACK  ->  ["Web3C8945DB", ...]

With ``running_instances="keep"`` (the default) a recorded Instance keeps its user data byte for byte (the
SSM association tunes it without a restart); an Instance not in the record is new and boots tuned. A stack
with no record at all may or may not be deployed: its Instances are tuned (a new stack must boot tuned) and
each gets a warning naming the command, so an existing app is never stopped without having been told.
``running_instances="restart"`` tunes recorded Instances too: the user chose the stop/start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from aws_cdk import CfnResource, Stack, Token

from .deployed_context import ASSOCIATION_TYPE, CONTEXT_KEY_PREFIX, USER_DATA_KEPT, context_key
from .template_relations import INSTANCE, LAUNCH_TEMPLATE, spec_refers_to

__all__ = ["CONTEXT_KEY_PREFIX", "RUNNING_INSTANCES", "context_key", "RunningDecision", "decide"]

#: Allowed values of ``AuditBacklog(running_instances=...)``.
RUNNING_INSTANCES = ("keep", "restart")


@dataclass(frozen=True)
class RunningDecision:
    """``keep``: leave the user data as it is; ``note``: the Metadata's ``deployed`` value (None: no key);
    ``warning``: ``(id, message)`` or None."""

    keep: bool
    note: Optional[str] = None
    warning: Optional[Tuple[str, str]] = None


_NEW = RunningDecision(keep=False)


def decide(
    resource: CfnResource,
    running_instances: str,
    *,
    kind: Optional[str] = None,
    stack: Optional[Stack] = None,
) -> RunningDecision:
    """The decision for one launch L1: an ``AWS::EC2::Instance``, or a launch template a running Instance
    launches from (``require_imdsv2`` makes one): a new version of it would replace that Instance.

    ``kind`` and ``stack``, when the caller already knows them, save a bridge call each."""
    kind = kind or resource.cfn_resource_type
    if kind == LAUNCH_TEMPLATE:
        return _launch_template_decision(resource, running_instances, stack)
    if kind != INSTANCE:
        return _NEW
    stack = stack or Stack.of(resource)
    deployed = _recorded_once(stack)
    path = resource.node.path
    if deployed is None:
        return RunningDecision(
            keep=False,
            warning=(
                "cdk-audit-backlog:running-instance-unknown",
                f"cdk-audit-backlog: {path} gets the block in its user data. If this instance already runs, "
                "the next deploy stops and starts it (CloudFormation UserData update; a replacement if it "
                "launches from a launch template) and does not re-run user data. For an app that is already "
                "deployed, run `cdk-audit-backlog impact cdk.out --record` first: running instances then "
                "keep their user data, and AuditBacklog.apply_to(app, association=True) tunes them without a "
                "restart. A stack that was never deployed can ignore this (the same command records it as "
                "such).",
            ),
        )
    if stack.resolve(resource.logical_id) not in deployed:
        return _NEW  # not running yet: boots tuned
    if running_instances == "restart":
        return RunningDecision(
            keep=False,
            note="user data changed: the next deploy stops and starts it (running_instances='restart')",
        )
    if _has_association(stack):
        return RunningDecision(keep=True, note=f"{USER_DATA_KEPT}; tuned by the association")
    return RunningDecision(
        keep=True,
        note=f"{USER_DATA_KEPT}; not tuned until replaced (no association in the stack)",
        warning=(
            "cdk-audit-backlog:running-instance-not-tuned",
            f"cdk-audit-backlog: {path} already runs, so its user data is kept (no stop/start), but no "
            "AWS::SSM::Association in its stack tunes it: use AuditBacklog.apply_to(app, association=True), "
            "or choose running_instances='restart' to tune it through its user data at the cost of a "
            "stop/start.",
        ),
    )


_RECORDED: Dict[str, Optional[FrozenSet[str]]] = {}


def _recorded_once(stack: Stack) -> Optional[FrozenSet[str]]:
    """``recorded_instances`` read once per stack (about ten bridge calls each time; context cannot change
    once a stack has children), keyed by the stack's jsii reference, which is never reused in a process."""
    key = stack.__jsii_ref__.ref
    if key not in _RECORDED:
        _RECORDED[key] = recorded_instances(stack)
    return _RECORDED[key]


def _launch_template_decision(
    template: CfnResource, running_instances: str, stack: Optional[Stack] = None
) -> RunningDecision:
    """An Instance's ``LaunchTemplate`` property changes with the template's version
    (``LatestVersionNumber``), and that property "requires replacement": so the launch template of a running
    Instance keeps its user data too (EC2 runs the Instance's own user data for it anyway)."""
    stack = stack or Stack.of(template)
    deployed = _recorded_once(stack)
    if not deployed:
        return _NEW
    logical_id = stack.resolve(template.logical_id)
    name = stack.resolve(template.launch_template_name)  # type: ignore[attr-defined]
    name = name if isinstance(name, str) else None
    users = sorted(
        lid
        for lid, spec in _instance_launch_templates(stack, deployed)
        if spec_refers_to(spec, logical_id, name)
    )
    if not users:
        return _NEW
    names = ", ".join(users)
    if running_instances == "restart":
        return RunningDecision(
            keep=False,
            note=f"user data changed: the next deploy replaces the running instance(s) {names} that launch "
            "from it (running_instances='restart')",
        )
    return RunningDecision(
        keep=True,
        note=f"{USER_DATA_KEPT}: the running instance(s) {names} launch from it; a new version would "
        "replace them",
    )


def _instance_launch_templates(stack: Stack, deployed: FrozenSet[str]) -> List[Tuple[str, Any]]:
    """``(logical id, LaunchTemplate property as the template spells it)`` of the recorded Instances of
    ``stack``."""
    out = []
    for c in stack.node.find_all():
        if not isinstance(c, CfnResource) or c.cfn_resource_type != INSTANCE:
            continue
        if Stack.of(c) is stack:
            lid = stack.resolve(c.logical_id)
            spec = stack.resolve(c.launch_template) if lid in deployed else None  # type: ignore[attr-defined]
            if spec:
                out.append((lid, _template_spelling(spec)))
    return out


def _template_spelling(spec: Any) -> Any:
    """A resolved L1 struct keeps jsii's keys (``launchTemplateName``); the template spells them with a
    capital (``LaunchTemplateName``), which is what :mod:`.template_relations` reads."""
    if not isinstance(spec, dict):
        return spec
    return {k[:1].upper() + k[1:]: v for k, v in spec.items()}


def recorded_instances(stack: Stack) -> Optional[FrozenSet[str]]:
    """Logical ids recorded as deployed for ``stack``, or None when nothing was recorded for it.

    A stack with a concrete environment reads its own key. An environment-agnostic stack (account and region
    are tokens) takes every record of its stack name, whatever the environment: keeping more user data
    unchanged is the safe side.
    """
    name = stack.stack_name
    if not Token.is_unresolved(stack.account) and not Token.is_unresolved(stack.region):
        return _ids(stack.node.try_get_context(context_key(stack.account, stack.region, name)))
    suffix = f":stack={name}"
    found = None
    for key, value in stack.node.get_all_context().items():
        if key.startswith(CONTEXT_KEY_PREFIX + ":") and key.endswith(suffix):
            ids = _ids(value)
            if ids is not None:
                found = (found or frozenset()) | ids
    return found


def _ids(value: Any) -> Optional[FrozenSet[str]]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"context {CONTEXT_KEY_PREFIX}:... must be a list of logical ids (written by "
            f"`cdk-audit-backlog impact --record`), got {value!r}"
        )
    return frozenset(value)


def _has_association(stack: Stack) -> bool:
    return any(
        isinstance(c, CfnResource) and c.cfn_resource_type == ASSOCIATION_TYPE and Stack.of(c) is stack
        for c in stack.node.find_all()
    )
