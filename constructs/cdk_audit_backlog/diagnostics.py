"""What the aspect tells the user about launches it cannot reach: groups whose launch template is not a
resource of the app, and Stages an app's aspect never visits.

Warnings go through ``Annotations`` with a stable id, as aws-cdk-lib's own aspects do.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

from aws_cdk import (
    Annotations,
    Aspects,
    CfnParameter,
    CfnResource,
    Reference,
    Stack,
    Stage,
    Token,
    Tokenization,
)
from constructs import IConstruct

from .launch_reader import USER_DATA_PATH, launch_references, raw

__all__ = [
    "HOOK_ID",
    "is_covered",
    "warn_if_launch_is_out_of_reach",
    "warn_about_inline_launch_specifications",
    "warn_about_unreached_stages",
]

#: Construct id of ``apply_to``'s hidden leaf under each scope and Stage it covers.
HOOK_ID = "CdkAuditBacklog"
#: Set on the classes that tune a scope (the aspect and apply_to's leaf), so that this module can tell them
#: without importing them.
TUNES_SCOPE = "_cdk_audit_backlog_tunes_scope"


def is_covered(stage: IConstruct) -> bool:
    """Whether ``stage`` already has an AuditBacklog: a plain aspect on it, or apply_to's hidden leaf."""
    if any(getattr(a, TUNES_SCOPE, False) for a in Aspects.of(stage).all):
        return True
    return getattr(stage.node.try_find_child(HOOK_ID), TUNES_SCOPE, False)


def warn_if_launch_is_out_of_reach(group: CfnResource, kind: str, properties: Any) -> None:
    """A group whose launch template or configuration is not a resource of this app cannot be tuned: say so.

    ``properties`` are the group's unresolved properties (``_cfn_properties``: tokens still tokens)."""
    if kind == "AWS::EKS::Nodegroup" and raw(properties, "launchTemplate") is None:
        reason: Optional[str] = (
            "the node group has no launch template, so EKS writes its user data; give it a launch template"
        )
    else:
        reason = _out_of_reach(launch_references(kind, properties, raw).all())
    if reason:
        Annotations.of(group).add_warning_v2(
            "cdk-audit-backlog:skipped", f"cdk-audit-backlog: {group.node.path} is not tuned: {reason}."
        )


def warn_about_inline_launch_specifications(group: CfnResource, kind: str, properties: Any) -> None:
    """A Spot Fleet's inline launch specifications carry user data of their own, which this release does not
    tune (its launch template configs are tuned through their templates): say so."""
    if kind != "AWS::EC2::SpotFleet":
        return
    specs = raw(raw(properties, "spotFleetRequestConfigData"), "launchSpecifications")
    if isinstance(specs, list) and specs:
        Annotations.of(group).add_warning_v2(
            "cdk-audit-backlog:skipped",
            f"cdk-audit-backlog: {group.node.path} is not tuned in its {len(specs)} inline launch "
            f"specification(s) (SpotFleetRequestConfigData.LaunchSpecifications); launch template configs "
            f"(LaunchTemplateConfigs) with an ec2.LaunchTemplate are tuned through the template.",
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
        if isinstance(target, CfnResource) and target.cfn_resource_type in USER_DATA_PATH:
            return None
        if isinstance(target, CfnParameter):
            return f"its launch template comes from the parameter {target.node.path}"
    return (
        "its launch template is imported (not defined in this app), so its user data cannot be seen or "
        "changed here"
    )


def warn_about_unreached_stages(app: Stage, aspect: Any) -> None:
    """``Aspects.of(app).add(...)`` never reaches Stages: say so where the user sees it."""
    if not any(a is aspect for a in Aspects.of(app).all):
        return
    unreached = [
        c for c in app.node.find_all() if c is not app and isinstance(c, Stage) and not is_covered(c)
    ]
    if not unreached:
        return
    names = ", ".join(s.node.path for s in unreached)
    message = (
        "cdk-audit-backlog: AuditBacklog was added to the app, but CDK does not apply an app's aspects "
        f"inside Stages, so launches in {names} are NOT tuned. Use AuditBacklog.apply_to(app) just before "
        "app.synth()."
    )
    stacks = [c for c in app.node.children if Stack.is_stack(c)]
    for stack in stacks:
        Annotations.of(stack).add_warning_v2("cdk-audit-backlog:stage-not-reached", message)
    if not stacks:
        print(f"[Warning] {message}", file=sys.stderr)
