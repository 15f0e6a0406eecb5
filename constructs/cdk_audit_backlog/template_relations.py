"""Which resource launches from which launch template, read from a synthesized template (the reader side).

A synthesized CloudFormation template spells properties in PascalCase and links resources with ``Ref`` and
``Fn::GetAtt``. :mod:`.check` asks which instance types a launch template launches (through the Auto Scaling
groups, EKS node groups and Instances that use it) and which template an Instance without user data of its
own launches from; :mod:`.running_instances` asks whether a running Instance launches from a template;
:mod:`.impact` asks which changed templates and configurations a group or Instance refers to. All of them
read the relation here.

The writer (the aspect, reading L1 properties through the jsii bridge) keeps its own parser on purpose: a
reader that checks the writer's output must not share code with it.

No CDK import: the operator CLI reads templates without starting jsii's Node process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Set, Tuple

__all__ = [
    "INSTANCE",
    "LAUNCH_TEMPLATE",
    "LAUNCH_CONFIGURATION",
    "AUTO_SCALING_GROUP",
    "NODEGROUP",
    "EC2_FLEET",
    "SPOT_FLEET",
    "fleet_configs",
    "LaunchTemplateUse",
    "references",
    "launch_template_name",
    "spec_refers_to",
    "launch_template_users",
    "launch_template_of",
]

INSTANCE = "AWS::EC2::Instance"
LAUNCH_TEMPLATE = "AWS::EC2::LaunchTemplate"
LAUNCH_CONFIGURATION = "AWS::AutoScaling::LaunchConfiguration"
AUTO_SCALING_GROUP = "AWS::AutoScaling::AutoScalingGroup"
NODEGROUP = "AWS::EKS::Nodegroup"
EC2_FLEET = "AWS::EC2::EC2Fleet"
SPOT_FLEET = "AWS::EC2::SpotFleet"


@dataclass(frozen=True)
class LaunchTemplateUse:
    """One resource that launches from a launch template.

    :param user: the logical id of the group, node group or Instance.
    :param user_type: its CloudFormation type.
    :param instance_types: the types it launches from the template in place of the template's own, as the
        template holds them (a string, a token, or None where an override selects by instance
        requirements); None when it launches the template's own type.
    """

    user: str
    user_type: str
    instance_types: Optional[Tuple[Any, ...]] = None


def references(value: Any, *, intrinsics: Tuple[str, ...] = ("Ref", "Fn::GetAtt")) -> Set[str]:
    """Logical ids a template value refers to (``Ref``, ``Fn::GetAtt`` in list or dotted form; ``intrinsics``
    narrows it, e.g. to ``("Fn::GetAtt",)`` for the attributes, such as a launch template's version
    number)."""
    found: Set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str) and k in intrinsics:
                found.add(v)
            elif (
                k == "Fn::GetAtt" and isinstance(v, list) and v and isinstance(v[0], str) and k in intrinsics
            ):
                found.add(v[0])
            elif k == "Fn::GetAtt" and isinstance(v, str) and k in intrinsics:
                found.add(v.split(".", 1)[0])
            else:
                found |= references(v, intrinsics=intrinsics)
    elif isinstance(value, list):
        for v in value:
            found |= references(v, intrinsics=intrinsics)
    return found


def launch_template_name(resource: Mapping[str, Any]) -> Optional[str]:
    """A launch template's ``LaunchTemplateName`` when the template holds it as a literal, else None."""
    name = (resource.get("Properties") or {}).get("LaunchTemplateName")
    return name if isinstance(name, str) else None


def spec_refers_to(
    spec: Any, logical_id: str, name: Optional[str], *, name_key: str = "LaunchTemplateName"
) -> bool:
    """Whether a launch template specification names the template ``logical_id`` (literal name ``name``).

    It does when any of its values refers to the template (``Ref`` for the id, ``Fn::GetAtt`` for a version)
    or when its name key (``LaunchTemplateName``; ``Name`` for EKS) holds the template's literal name.
    """
    if not isinstance(spec, Mapping):
        return False
    if logical_id in references(dict(spec)):
        return True
    return name is not None and spec.get(name_key) == name


def launch_template_users(resources: Mapping[str, Any], logical_id: str) -> List[LaunchTemplateUse]:
    """Every use of the launch template ``logical_id`` by the resources of the same template, in template
    order: Auto Scaling groups (``LaunchTemplate``, or ``MixedInstancesPolicy`` whose overrides replace the
    template's type), EKS node groups (``InstanceTypes``), EC2 Fleets and Spot Fleets (each launch template
    config that names it, with its ``Overrides``) and Instances (their own ``InstanceType``)."""
    name = launch_template_name(resources.get(logical_id) or {})
    out: List[LaunchTemplateUse] = []
    for user, other in resources.items():
        if not isinstance(other, Mapping):
            continue
        kind, props = other.get("Type"), other.get("Properties") or {}
        if kind == AUTO_SCALING_GROUP:
            out.extend(_group_uses(user, props, logical_id, name))
        elif kind == NODEGROUP:  # EKS spells the specification's keys Id and Name
            if spec_refers_to(props.get("LaunchTemplate"), logical_id, name, name_key="Name"):
                types = props.get("InstanceTypes")
                listed = tuple(types) if isinstance(types, list) and types else None
                out.append(LaunchTemplateUse(user, kind, listed))
        elif kind in (EC2_FLEET, SPOT_FLEET):  # each launch template config that names it, with its overrides
            for config in fleet_configs(kind, props):
                if spec_refers_to(config.get("LaunchTemplateSpecification"), logical_id, name):
                    overrides = [o for o in (config.get("Overrides") or []) if isinstance(o, Mapping)]
                    types = tuple(o.get("InstanceType") for o in overrides) or None
                    out.append(LaunchTemplateUse(user, kind, types))
        elif kind == INSTANCE:
            if spec_refers_to(props.get("LaunchTemplate"), logical_id, name):
                own = (props["InstanceType"],) if "InstanceType" in props else None
                out.append(LaunchTemplateUse(user, kind, own))
    return out


def fleet_configs(kind: str, props: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """The launch template configs of an EC2 Fleet, or of a Spot Fleet (inside its request config)."""
    if kind == SPOT_FLEET:
        props = props.get("SpotFleetRequestConfigData") or {}
    configs = props.get("LaunchTemplateConfigs") if isinstance(props, Mapping) else None
    return [c for c in configs if isinstance(c, Mapping)] if isinstance(configs, list) else []


def _group_uses(
    user: str, props: Mapping[str, Any], logical_id: str, name: Optional[str]
) -> List[LaunchTemplateUse]:
    """An Auto Scaling group's uses of one template: its ``LaunchTemplate``, and its mixed instances policy
    (each override may name a template of its own; one that names none uses the policy's template)."""
    out: List[LaunchTemplateUse] = []
    if spec_refers_to(props.get("LaunchTemplate"), logical_id, name):
        out.append(LaunchTemplateUse(user, AUTO_SCALING_GROUP))
    mixed = (props.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}
    main_is_ours = spec_refers_to(mixed.get("LaunchTemplateSpecification"), logical_id, name)
    ours = [
        o
        for o in (mixed.get("Overrides") or [])
        if isinstance(o, Mapping)
        and (
            (o.get("LaunchTemplateSpecification") is None and main_is_ours)
            or spec_refers_to(o.get("LaunchTemplateSpecification"), logical_id, name)
        )
    ]
    if ours:
        out.append(LaunchTemplateUse(user, AUTO_SCALING_GROUP, tuple(o.get("InstanceType") for o in ours)))
    elif main_is_ours:
        out.append(LaunchTemplateUse(user, AUTO_SCALING_GROUP))
    return out


def launch_template_of(resource: Mapping[str, Any], resources: Mapping[str, Any]) -> Optional[str]:
    """The logical id of the launch template (in the same template) an Instance launches from, if any."""
    if resource.get("Type") != INSTANCE:
        return None
    spec = (resource.get("Properties") or {}).get("LaunchTemplate")
    if not isinstance(spec, Mapping):
        return None
    for key, other in resources.items():
        if isinstance(other, Mapping) and other.get("Type") == LAUNCH_TEMPLATE:
            if spec_refers_to(spec, key, launch_template_name(other)):
                return key
    return None
