"""Reading launches from the construct tree: which L1s launch machines, what they hold, and who uses them.

Everything here reads, nothing decides or writes. The reads cross the jsii bridge, which costs a round trip
per call, so they are batched: one ``find_all`` per scope, one ``_cfn_properties`` per resource, one
``stack.resolve`` per stack.

This is the writer side's only parser of the relation "which launch template or configuration does this Auto
Scaling group or EKS node group use" (:func:`launch_references`), on L1 properties before synthesis. The
reader side (``check``, ``impact``, ``report``) parses synthesized templates with a parser of its own on
purpose: the code that checks the output shares none with the code that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from aws_cdk import CfnResource, Stack, Stage
from constructs import Construct, IConstruct

from .registry import AppRegistry

__all__ = [
    "USER_DATA_PATH",
    "CONSUMER_TYPES",
    "FLEET_TYPES",
    "SkipMarker",
    "Launch",
    "Group",
    "Scan",
    "LaunchReferences",
    "key",
    "kind_of",
    "scan",
    "read_stack",
    "launch_references",
    "index_groups",
    "groups_by_launch_template",
    "consumer_uses",
    "fleet_configs",
    "skip_marker_reason",
    "get",
    "raw",
]

# Resource type -> dotted path of its UserData property.
USER_DATA_PATH = {
    "AWS::EC2::Instance": "UserData",
    "AWS::EC2::LaunchTemplate": "LaunchTemplateData.UserData",
    "AWS::AutoScaling::LaunchConfiguration": "UserData",
}
#: Fleets launch from launch templates named in launch template configs, each with its own overrides.
FLEET_TYPES = ("AWS::EC2::EC2Fleet", "AWS::EC2::SpotFleet")
CONSUMER_TYPES = ("AWS::AutoScaling::AutoScalingGroup", "AWS::EKS::Nodegroup") + FLEET_TYPES
# The few properties read from each kind (camelCase, as CDK keeps L1 properties before rendering).
_GROUP_FIELDS = {
    "AWS::AutoScaling::AutoScalingGroup": (
        "launchTemplate",
        "mixedInstancesPolicy",
        "launchConfigurationName",
    ),
    "AWS::EKS::Nodegroup": ("launchTemplate", "instanceTypes"),
    "AWS::EC2::EC2Fleet": ("launchTemplateConfigs",),
    "AWS::EC2::SpotFleet": ("spotFleetRequestConfigData",),
}
SKIP_ID = "CdkAuditBacklogSkip"


def key(construct: Any) -> str:
    """A stable key for a JS object: its jsii reference. (The Python proxy of an object created on the JS
    side, e.g. an L2's L1, may be dropped and made anew between two calls, so ``id()`` is not stable.)"""
    return construct.__jsii_ref__.ref


class SkipMarker(Construct):
    """Hidden child that marks a scope as excluded by ``AuditBacklog.skip`` (a child is one lookup away for
    the aspect, unlike node metadata, which carries stack traces across the jsii bridge)."""

    def __init__(self, scope: IConstruct, reason: str) -> None:
        super().__init__(scope, SKIP_ID)
        self.reason = reason

    @staticmethod
    def mark(scope: IConstruct, reason: str) -> None:
        """Marks ``scope`` (a second call on the same scope replaces the reason)."""
        existing = scope.node.try_find_child(SKIP_ID)
        if isinstance(existing, SkipMarker):
            existing.reason = reason
        else:
            SkipMarker(scope, reason)
        AppRegistry.of(scope).skips_used = True

    def describe(self) -> str:
        scope = self.node.scope
        assert scope is not None
        return f"excluded with AuditBacklog.skip() on {scope.node.path or 'the app'}: {self.reason}"


def skip_marker_reason(resource: IConstruct, registry: AppRegistry) -> Optional[str]:
    """The reason of the nearest ``skip()`` above ``resource`` (one bridge call per scope above it, where the
    app has any)."""
    for scope in reversed(resource.node.scopes) if registry.skips_used else []:
        marker = scope.node.try_find_child(SKIP_ID)
        if isinstance(marker, SkipMarker):
            return marker.describe()
    return None


# Read once per Python class: a cache of generated L1 classes, not state of any app.
_KIND_CACHE: Dict[type, Optional[str]] = {}


def kind_of(node: IConstruct) -> Optional[str]:
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
    return kind if kind in USER_DATA_PATH or kind in CONSUMER_TYPES else None


@dataclass
class Scan:
    """Launches and groups under one scope, by stack."""

    stacks: List[Tuple[Stack, List[Tuple[CfnResource, str]], List[Tuple[CfnResource, str]]]]
    skipped: Dict[str, str]  # key of a launch or group under a skip() scope -> reason


def scan(root: IConstruct) -> Scan:
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
            if key(stage) not in inside:
                inside.update(key(c) for c in stage.node.find_all())
        nodes = [c for c in nodes if key(c) not in inside]

    # Which stack a resource belongs to, without asking per resource: the subtree of a stack that has no stack
    # above it is contiguous in depth-first order and holds no other such stack, so a resource belongs to the
    # last one before it, unless it is inside a stack within a stack (a NestedStack), listed separately.
    inner_owner: Dict[str, Stack] = {}
    for c in nodes:
        if isinstance(c, Stack) and any(isinstance(s, Stack) for s in c.node.scopes[:-1]):
            inner_owner.update((key(x), c) for x in c.node.find_all())  # depth first: deeper stacks last
    by_stack: Dict[str, Tuple[Stack, List[Tuple[CfnResource, str]], List[Tuple[CfnResource, str]]]] = {}
    markers: List[SkipMarker] = []
    top: Optional[Stack] = None
    for c in nodes:
        if isinstance(c, Stack) and key(c) not in inner_owner:
            top = c
        if isinstance(c, SkipMarker):
            markers.append(c)
            continue
        kind = kind_of(c)
        if kind is None:
            continue
        stack = inner_owner.get(key(c)) or top
        if stack is None:
            continue
        entry = by_stack.setdefault(key(stack), (stack, [], []))
        (entry[1] if kind in USER_DATA_PATH else entry[2]).append((c, kind))  # type: ignore[arg-type]

    skipped: Dict[str, str] = {}
    for marker in markers:  # depth first: a marker nearer to the resource comes later and wins
        reason = marker.describe()
        skipped.update((key(x), reason) for x in marker.node.scope.node.find_all())  # type: ignore[union-attr]
    return Scan(list(by_stack.values()), skipped)


@dataclass
class Group:
    """An Auto Scaling group or EKS node group, as far as choosing a launch template's limit needs it."""

    resource: CfnResource
    cfn_resource_type: str
    props: Any  # resolved: launchTemplate, mixedInstancesPolicy, launchConfigurationName / instanceTypes
    raw: Any  # unresolved properties (tokens still tokens), for the out-of-reach check


@dataclass
class Launch:
    """One launch L1 and what deciding needs of it."""

    resource: CfnResource
    cfn_resource_type: str
    data: Any  # resolved {userData, instanceType} (of the LaunchTemplateData for a launch template)
    logical_id: Optional[str] = None  # launch templates and configurations (groups refer to them by it)
    consumers: List[Group] = field(default_factory=list)
    skipped: Optional[str] = None  # reason given to AuditBacklog.skip() on a scope above it
    stack: Optional[Stack] = None

    @property
    def user_data(self) -> Any:
        return get(self.data, "UserData")


def read_stack(
    stack: Stack, launches: Sequence[Tuple[CfnResource, str]], groups: Sequence[Tuple[CfnResource, str]]
) -> Tuple[List[Launch], List[Group]]:
    """Reads launches and groups of one stack: one bridge call each for its properties (``_cfn_properties``
    comes back by value in one message, where a struct property such as ``launch_template_data`` costs one
    message per field of the struct), one per launch template or configuration for its logical id, and one
    ``stack.resolve`` for all of them."""
    raws = [r._cfn_properties for r, _ in launches]  # type: ignore[attr-defined]
    group_raws = [g._cfn_properties for g, _ in groups]  # type: ignore[attr-defined]
    wanted: List[Any] = []
    for (_, kind), props in zip(launches, raws):
        data = get(props, "LaunchTemplateData") if kind == "AWS::EC2::LaunchTemplate" else props
        if isinstance(
            data, dict
        ):  # only what deciding reads: tag specifications and the like stay unresolved
            wanted.append({"userData": get(data, "UserData"), "instanceType": get(data, "InstanceType")})
        else:
            wanted.append(data)  # a token or a struct object read earlier through its typed getter: all of it
    for (_, kind), props in zip(groups, group_raws):
        wanted.append({name: get(props, name) for name in _GROUP_FIELDS[kind]})
    named = [i for i, (_, kind) in enumerate(launches) if kind != "AWS::EC2::Instance"]
    wanted.extend(launches[i][0].logical_id for i in named)
    resolved = stack.resolve(wanted) if wanted else []
    out = [Launch(r, kind, resolved[i], stack=stack) for i, (r, kind) in enumerate(launches)]
    for n, i in enumerate(named):
        out[i].logical_id = resolved[len(launches) + len(groups) + n]
    read_groups = [
        Group(g, kind, resolved[len(launches) + i], group_raws[i]) for i, (g, kind) in enumerate(groups)
    ]
    return out, read_groups


# -- which launch a group uses: the writer side's one parser ----------------------------------------------


@dataclass(frozen=True)
class LaunchReferences:
    """How a group names the launch it uses, as its properties hold them (strings, tokens, or resolved
    ``{"Ref": ...}`` values): launch template ids and names (an Auto Scaling group's own and its mixed
    instances policy's), and a launch configuration's name."""

    template_ids: Tuple[Any, ...]
    template_names: Tuple[Any, ...]
    configuration: Any = None

    def all(self) -> List[Any]:
        return [*self.template_ids, *self.template_names, self.configuration]


def launch_references(kind: str, props: Any, read: Callable[[Any, str], Any]) -> LaunchReferences:
    """What ``props`` of a group of ``kind`` name as its launch. ``read`` reads one field of a struct:
    :func:`get` for resolved properties, :func:`raw` for unresolved ones."""
    if kind == "AWS::EKS::Nodegroup":
        spec = read(props, "launchTemplate")
        return LaunchReferences((read(spec, "id"),), (read(spec, "name"),))
    if kind in FLEET_TYPES:
        specs = [read(config, "launchTemplateSpecification") for config in fleet_configs(kind, props, read)]
        return LaunchReferences(
            tuple(read(spec, "launchTemplateId") for spec in specs),
            tuple(read(spec, "launchTemplateName") for spec in specs),
        )
    own = read(props, "launchTemplate")
    mixed = read(read(read(props, "mixedInstancesPolicy"), "launchTemplate"), "launchTemplateSpecification")
    return LaunchReferences(
        tuple(read(spec, "launchTemplateId") for spec in (own, mixed)),
        tuple(read(spec, "launchTemplateName") for spec in (own, mixed)),
        read(props, "launchConfigurationName"),
    )


def index_groups(groups: Sequence[Group]) -> Dict[str, List[Group]]:
    """Logical id of a launch template -> the groups (of one stack) that use it."""
    out: Dict[str, List[Group]] = {}
    for group in groups:
        for ref in launch_references(group.cfn_resource_type, group.props, get).template_ids:
            if isinstance(ref, dict) and isinstance(ref.get("Ref"), str):
                out.setdefault(ref["Ref"], []).append(group)
    return out


def groups_by_launch_template(stack: Stack) -> Dict[str, List[Group]]:
    """Logical id of a launch template -> the groups of ``stack`` that use it (the plain path: one walk)."""
    found = []
    for c in stack.node.find_all():
        kind = kind_of(c)
        if kind in CONSUMER_TYPES and Stack.of(c) is stack:
            found.append((c, kind))
    _, groups = read_stack(stack, [], found)
    return index_groups(groups)


def fleet_configs(kind: str, props: Any, read: Callable[[Any, str], Any]) -> List[Any]:
    """The launch template configs of an EC2 Fleet or a Spot Fleet (Spot Fleet keeps them, and its inline
    launch specifications, in its request config)."""
    if kind == "AWS::EC2::SpotFleet":
        props = read(props, "spotFleetRequestConfigData")
    configs = read(props, "launchTemplateConfigs")
    return list(configs) if isinstance(configs, list) else []


def consumer_uses(consumer: Group, template_id: str) -> List[List[Any]]:
    """How a group launches from the launch template ``template_id`` (a logical id): one list of instance
    types per use, an empty list where the use launches the template's own type. A non-string entry means "not
    known at synth time" (InstanceRequirements: attribute-based selection, so auto)."""
    kind = consumer.cfn_resource_type
    if kind == "AWS::EKS::Nodegroup":
        types = get(consumer.props, "InstanceTypes")
        return [list(types) if isinstance(types, list) and types else []]
    if kind in FLEET_TYPES:  # one use per config naming this template, with that config's overrides
        uses = []
        for config in fleet_configs(kind, consumer.props, get):
            ref = get(get(config, "LaunchTemplateSpecification"), "LaunchTemplateId")
            if isinstance(ref, dict) and ref.get("Ref") == template_id:
                overrides = get(config, "Overrides")
                uses.append(
                    [get(o, "InstanceType") for o in overrides] if isinstance(overrides, list) else []
                )
        return uses
    mixed = get(consumer.props, "MixedInstancesPolicy")
    overrides = get(get(mixed, "LaunchTemplate"), "Overrides")
    return [[get(o, "InstanceType") for o in overrides] if isinstance(overrides, list) else []]


def get(data: Any, name: str) -> Any:
    """A property of a resolved L1 struct: CDK resolves L1 structs with camelCase keys, raw overrides use
    CloudFormation's PascalCase; accept both."""
    if not isinstance(data, dict):
        return None
    camel = name[0].lower() + name[1:]
    return data[camel] if camel in data else data.get(name)


def raw(data: Any, name: str) -> Any:
    """A field of an unresolved L1 struct: a dict (camelCase keys) or, where someone read the struct through
    its typed getter before, a jsii struct object (snake_case attributes)."""
    if data is None or isinstance(data, dict):
        return get(data, name)
    snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in name)
    return getattr(data, snake, None)
