"""``impact``: what the next ``cdk deploy`` does to each launch resource of a deployed stack and its machines.

The "after" is a synthesized cloud assembly (``cdk.out``); the "before" is the template CloudFormation holds
for the stack (``GetTemplate``). The effect of each change comes from CloudFormation's documented update
behaviour, not from running the update:

- ``AWS::EC2::Instance``: ``UserData`` / ``InstanceType`` (and a few more) → the instance is stopped and
  started, and EC2 does not run the new user data (cloud-init runs user scripts once per instance);
  ``ImageId``, ``SubnetId``, ``LaunchTemplate`` … → a new instance replaces it.
- ``AWS::EC2::LaunchTemplate``: a new version; running instances are unchanged, new launches use it.
- ``AWS::AutoScaling::LaunchConfiguration``: every property change replaces it; running instances keep
  theirs. The group that uses a changed template or configuration rolls its instances only if its
  ``UpdatePolicy`` says so (``AutoScalingRollingUpdate``, ``AutoScalingReplacingUpdate``).
- ``AWS::EKS::Nodegroup`` on a changed launch template: EKS replaces the nodes (rolling update).
- ``AWS::SSM::Association`` created: the machines it targets are tuned when it is created, then on its
  schedule, without a restart.

Machines interrupted (stopped, replaced, terminated) make the command exit 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

from .aws_api import aws_errors, boto3_module, client_config, deployed_template
from .cloud_assembly import AssemblyError, SynthesizedStack
from .cloud_assembly import assembly_stacks as read_assembly_stacks
from .deployed_context import ASSOCIATION_TYPE, context_key
from .errors import CliError
from .template_relations import (
    AUTO_SCALING_GROUP,
    EC2_FLEET,
    INSTANCE,
    LAUNCH_CONFIGURATION,
    LAUNCH_TEMPLATE,
    NODEGROUP,
    SPOT_FLEET,
    references,
)

__all__ = [
    "SynthesizedStack",
    "Impact",
    "assembly_stacks",
    "template_impacts",
    "stack_impacts",
    "deployed_instance_ids",
    "record_deployed_instances",
]

DOCUMENT = "AWS::SSM::Document"
_FLEETS = (EC2_FLEET, SPOT_FLEET)
_SHOWN = (
    INSTANCE, LAUNCH_TEMPLATE, LAUNCH_CONFIGURATION, AUTO_SCALING_GROUP, NODEGROUP, ASSOCIATION_TYPE, DOCUMENT
) + _FLEETS
# An EC2 Fleet's properties that change in place (CloudFormation's AWS::EC2::EC2Fleet reference); every other
# property of it, and any change of a Spot Fleet's SpotFleetRequestConfigData, "requires replacement".
_EC2_FLEET_IN_PLACE = frozenset({"TargetCapacitySpecification", "ExcessCapacityTerminationPolicy", "Context"})

# AWS::EC2::Instance properties by CloudFormation's "Update requires" (AWS::EC2::Instance reference page).
_INSTANCE_STOP_START = frozenset(
    {"UserData", "InstanceType", "EbsOptimized", "KernelId", "RamdiskId", "AdditionalInfo", "Tenancy",
     "PrivateDnsNameOptions"}
)
_INSTANCE_REPLACEMENT = frozenset(
    {"ImageId", "AvailabilityZone", "SubnetId", "KeyName", "LaunchTemplate", "NetworkInterfaces",
     "PrivateIpAddress", "SecurityGroups", "BlockDeviceMappings", "CpuOptions", "Ipv6AddressCount",
     "Ipv6Addresses", "PlacementGroupName", "HibernationOptions", "EnclaveOptions", "LicenseSpecifications",
     "ElasticGpuSpecifications", "ElasticInferenceAccelerators", "HostResourceGroupArn"}
)
_INSTANCE_NO_INTERRUPTION = frozenset(
    {"Tags", "IamInstanceProfile", "Monitoring", "DisableApiTermination", "InstanceInitiatedShutdownBehavior",
     "SourceDestCheck", "Volumes", "Affinity", "HostId", "SsmAssociations", "CreditSpecification"}
)
# Group properties whose change triggers the group's UpdatePolicy (AutoScalingRollingUpdate docs).
_GROUP_ROLLING_TRIGGERS = frozenset(
    {"LaunchConfigurationName", "LaunchTemplate", "MixedInstancesPolicy", "VPCZoneIdentifier"}
)


@dataclass
class Impact:
    """What the next deploy does to one resource: ``change`` (created, deleted, updated, unchanged) and
    ``effect`` on its machines; ``interrupts`` when running machines are stopped, replaced or terminated."""

    stack: str
    logical_id: str
    resource_type: str
    change: str
    effect: str
    interrupts: bool = False
    properties: List[str] = field(default_factory=list)


def assembly_stacks(cdk_out: Path) -> List[SynthesizedStack]:
    """Every stack of a cloud assembly, nested assemblies (Stages) included, from its ``manifest.json``."""
    try:
        return read_assembly_stacks(cdk_out)
    except AssemblyError as e:
        raise CliError(f"impact: {e}") from None


def template_impacts(
    stack: str, before: Optional[Mapping[str, Any]], after: Mapping[str, Any]
) -> List[Impact]:
    """The impact of replacing ``before`` (None: stack not deployed) by ``after``, per launch resource."""
    old = dict((before or {}).get("Resources") or {})
    new = dict(after.get("Resources") or {})
    deployed = before is not None
    changed: Set[str] = set()  # launch templates / configurations whose next deploy changes them
    for lid, res in new.items():
        if res.get("Type") in (LAUNCH_TEMPLATE, LAUNCH_CONFIGURATION):
            prev = old.get(lid)
            if prev is None or prev.get("Type") != res.get("Type") or _props(prev) != _props(res):
                changed.add(lid)
    out: List[Impact] = []
    for lid in sorted(set(old) | set(new)):
        res, prev = new.get(lid), old.get(lid)
        kind = (res or prev or {}).get("Type")
        if kind not in _SHOWN:
            continue
        if prev is not None and res is not None and prev.get("Type") != res.get("Type"):
            out.append(_deleted(stack, lid, prev))
            out.append(_created(stack, lid, res, deployed))
        elif prev is None:
            out.append(_created(stack, lid, res, deployed))
        elif res is None:
            out.append(_deleted(stack, lid, prev))
        else:
            out.append(_updated(stack, lid, prev, res, changed))
    return out


def _props(res: Mapping[str, Any]) -> Dict[str, Any]:
    return dict(res.get("Properties") or {})


def _changed_properties(prev: Mapping[str, Any], res: Mapping[str, Any]) -> List[str]:
    a, b = _props(prev), _props(res)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _created(stack: str, lid: str, res: Mapping[str, Any], deployed: bool) -> Impact:
    kind = res["Type"]
    effect = {
        INSTANCE: "new instance: boots with the user data as synthesized",
        LAUNCH_TEMPLATE: "new launch template: instances launched from it boot with its user data",
        LAUNCH_CONFIGURATION: "new launch configuration: instances launched from it boot with its user data",
        AUTO_SCALING_GROUP: "new group: its instances boot from its launch template / configuration",
        NODEGROUP: "new node group: its nodes boot from its launch template",
        EC2_FLEET: "new fleet: its instances boot from its launch templates",
        SPOT_FLEET: "new fleet: its instances boot from its launch templates / launch specifications",
        DOCUMENT: "new SSM document (runs only through an association or Run Command)",
    }.get(kind, "")
    if kind == ASSOCIATION_TYPE:
        props = _props(res)
        schedule = props.get("ScheduleExpression")
        effect = (
            "new association: the machines it targets ("
            + _targets_text(props.get("Targets"), stack)
            + ") are tuned when it is created"
            + (f", then on {schedule}" if isinstance(schedule, str) else "")
            + "; no restart, running processes untouched"
        )
    note = "" if deployed else " (stack not deployed yet)"
    return Impact(stack, lid, kind, "created", effect + note)


def _targets_text(targets: Any, stack: str) -> str:
    if not isinstance(targets, list) or not targets:
        return "no targets"
    parts = []
    for t in targets:
        if isinstance(t, dict):
            values = t.get("Values")
            shown = "?"
            if isinstance(values, list):
                shown = ",".join(_value_text(v, stack) for v in values)
            parts.append(f"{t.get('Key')}={shown}")
    return "; ".join(parts) or "?"


def _value_text(value: Any, stack: str) -> str:
    if isinstance(value, str):
        return value
    if value == {"Ref": "AWS::StackName"}:  # AssociationTarget.stack_instances()
        return stack
    return "<token>"


def _deleted(stack: str, lid: str, prev: Mapping[str, Any]) -> Impact:
    kind = prev["Type"]
    if kind == INSTANCE:
        return Impact(stack, lid, kind, "deleted", "instance terminated", interrupts=True)
    if kind in (AUTO_SCALING_GROUP, NODEGROUP):
        effect = "group deleted: its instances are terminated"
        return Impact(stack, lid, kind, "deleted", effect, interrupts=True)
    if kind in _FLEETS:
        return Impact(stack, lid, kind, "deleted", _FLEET_GONE, interrupts=True)
    if kind == ASSOCIATION_TYPE:
        return Impact(stack, lid, kind, "deleted", "association deleted: machines keep what it applied")
    return Impact(stack, lid, kind, "deleted", "deleted: running instances launched from it keep running")


def _updated(
    stack: str, lid: str, prev: Mapping[str, Any], res: Mapping[str, Any], changed: Set[str]
) -> Impact:
    kind = res["Type"]
    props = _changed_properties(prev, res)
    if kind == INSTANCE:
        return _instance_update(stack, lid, props, references(_props(res)) & changed)
    if kind in (AUTO_SCALING_GROUP, NODEGROUP):
        return _group_update(stack, lid, res, props, references(_props(res)) & changed)
    if kind in _FLEETS:
        return _fleet_update(stack, lid, kind, res, props, changed)
    if not props:
        return Impact(stack, lid, kind, "unchanged", "nothing happens")
    effect = {
        LAUNCH_TEMPLATE: "new launch template version: running instances unchanged; instances launched "
        "from now on use it",
        LAUNCH_CONFIGURATION: "launch configuration replaced by a new one: running instances unchanged; "
        "instances launched from now on use it",
        ASSOCIATION_TYPE: "association updated: applied again to its targets; no restart",
    }.get(kind, "updated in place")
    return Impact(stack, lid, kind, "updated", effect, properties=props)


def _instance_update(stack: str, lid: str, props: List[str], changed_refs: Set[str]) -> Impact:
    if changed_refs and "LaunchTemplate" not in props:
        props = sorted(set(props) | {"LaunchTemplate"})  # its template gets a new version: same as a change
    if not props:
        return Impact(stack, lid, INSTANCE, "unchanged", "nothing happens")
    replaced = [p for p in props if p in _INSTANCE_REPLACEMENT]
    stop_start = [p for p in props if p in _INSTANCE_STOP_START]
    unknown = [p for p in props if p not in _INSTANCE_NO_INTERRUPTION and p not in replaced + stop_start]
    if replaced:
        effect = f"replaced: a new instance, the running one terminated ({', '.join(replaced)} changed)"
    elif stop_start:
        effect = f"stopped and started ({', '.join(stop_start)} changed); EC2 does not run the new user data"
    elif unknown:
        effect = f"{', '.join(unknown)} changed: may interrupt it (see CloudFormation's update behaviour)"
    else:
        return Impact(stack, lid, INSTANCE, "updated", "updated in place, no interruption", properties=props)
    return Impact(stack, lid, INSTANCE, "updated", effect, interrupts=True, properties=props)


_FLEET_GONE = (
    "fleet deleted: it launches no more instances, and its running ones may be terminated with it (an "
    "instant fleet's always are)"
)


def _fleet_update(
    stack: str, lid: str, kind: str, res: Mapping[str, Any], props: List[str], changed: Set[str]
) -> Impact:
    """A fleet's launch template configs require replacement when they change; a config that names a changed
    template's version through ``Fn::GetAtt`` changes with it, one that names ``$Latest`` / ``$Default`` does
    not (the fleet launches the new version from then on)."""
    versioned = references(_props(res), intrinsics=("Fn::GetAtt",)) & changed
    following = (references(_props(res)) & changed) - versioned
    in_place = kind == EC2_FLEET and all(p in _EC2_FLEET_IN_PLACE for p in props)
    shown = sorted(set(props) | {f"{r} (new version)" for r in versioned | following})
    if versioned or (props and not in_place):
        effect = f"replaced: a new fleet is created and this one deleted ({_FLEET_GONE.split(': ', 1)[1]})"
        return Impact(stack, lid, kind, "updated", effect, interrupts=True, properties=shown)
    if following:
        effect = "running instances keep their launch settings; instances it launches from now on boot tuned"
        return Impact(stack, lid, kind, "updated", effect, properties=shown)
    if props:
        return Impact(
            stack, lid, kind, "updated", "updated in place; running instances unchanged", properties=shown
        )
    return Impact(stack, lid, kind, "unchanged", "nothing happens")


def _group_update(
    stack: str, lid: str, res: Mapping[str, Any], props: List[str], changed_refs: Set[str]
) -> Impact:
    kind = res["Type"]
    launch_changed = bool(changed_refs) or any(p in _GROUP_ROLLING_TRIGGERS for p in props)
    shown = sorted(set(props) | {f"{r} (new version)" for r in changed_refs})
    if not launch_changed:
        if not props:
            return Impact(stack, lid, kind, "unchanged", "nothing happens")
        effect = "updated in place; running instances unchanged"
        return Impact(stack, lid, kind, "updated", effect, properties=shown)
    if kind == NODEGROUP:
        return Impact(stack, lid, kind, "updated", "EKS replaces the nodes (rolling update to the new launch "
                      "template version; pods are drained)", interrupts=True, properties=shown)
    policy = res.get("UpdatePolicy") or {}
    replacing = policy.get("AutoScalingReplacingUpdate") or {}
    rolling = policy.get("AutoScalingRollingUpdate")
    if replacing.get("WillReplace") in (True, "true", "True"):
        effect = ("UpdatePolicy AutoScalingReplacingUpdate: a new group replaces this one; the running "
                  "instances are terminated once it is ready")
        return Impact(stack, lid, kind, "updated", effect, interrupts=True, properties=shown)
    if isinstance(rolling, dict):
        batch = rolling.get("MaxBatchSize", 1)
        keep = rolling.get("MinInstancesInService", 0)
        effect = (f"UpdatePolicy AutoScalingRollingUpdate: running instances replaced in batches of {batch} "
                  f"(at least {keep} in service); the new ones boot tuned")
        return Impact(stack, lid, kind, "updated", effect, interrupts=True, properties=shown)
    effect = ("running instances keep their launch settings (no UpdatePolicy rolls them); instances launched "
              "from now on (scale-out, replacement) boot tuned")
    return Impact(stack, lid, kind, "updated", effect, properties=shown)


# ------------------------------------------------------------------------------------ deployed side


def _deployed_json(cfn: Any, stack_name: str) -> Optional[Dict[str, Any]]:
    try:
        return deployed_template(cfn, stack_name)
    except ValueError:
        raise CliError(f"impact: the deployed template of {stack_name} is not JSON") from None


def deployed_instance_ids(template: Optional[Mapping[str, Any]]) -> List[str]:
    """Logical ids of the ``AWS::EC2::Instance`` resources of a deployed template (empty: none or no
    stack)."""
    resources = (template or {}).get("Resources") or {}
    return sorted(lid for lid, r in resources.items() if r.get("Type") == INSTANCE)


@dataclass
class StackImpact:
    stack: SynthesizedStack
    account: str
    region: str
    deployed: Optional[Dict[str, Any]]
    impacts: List[Impact]


def stack_impacts(
    cdk_out: Path,
    *,
    stacks: Iterable[str] = (),
    session: Any = None,
    region: Optional[str] = None,
) -> List[StackImpact]:
    """For each stack of the assembly (or those named in ``stacks``, by stack name or artifact id): the
    deployed template in its account/region and the impact of deploying the synthesized one."""
    found = assembly_stacks(cdk_out)
    wanted = set(stacks)
    if wanted:
        found = [s for s in found if s.stack_name in wanted or s.artifact_id in wanted]
        missing = wanted - {s.stack_name for s in found} - {s.artifact_id for s in found}
        if missing:
            raise CliError(f"impact: no stack {', '.join(sorted(missing))} in {cdk_out}")
    session = session or boto3_module().session.Session(region_name=region)
    config = client_config()
    out: List[StackImpact] = []
    for s in found:
        where = s.region or region
        kw = {"region_name": where} if where else {}
        what = f"stack {s.stack_name}"
        # aws_errors runs each callable at once; the loop's values are bound as defaults all the same.
        cfn = aws_errors(what, lambda kw=kw: session.client("cloudformation", config=config, **kw))
        before = aws_errors(what, lambda cfn=cfn, name=s.stack_name: _deployed_json(cfn, name))
        account = s.account or aws_errors(
            what, lambda kw=kw: session.client("sts", config=config, **kw).get_caller_identity()["Account"]
        )
        impacts = template_impacts(s.stack_name, before, s.template)
        out.append(StackImpact(s, account, cfn.meta.region_name, before, impacts))
    return out


def record_deployed_instances(context_file: Path, results: Iterable[StackImpact]) -> Dict[str, List[str]]:
    """Write, per stack, the Instances its deployed template holds into ``cdk.context.json`` (keeps other
    keys).

    A stack that is not deployed is recorded with an empty list: its Instances are new and boot tuned, and
    the aspect stops warning about them.
    """
    data: Dict[str, Any] = {}
    if context_file.exists():
        try:
            data = json.loads(context_file.read_text(encoding="utf-8") or "{}")
        except ValueError as e:
            raise CliError(f"impact: {context_file} is not JSON ({e}); nothing recorded") from None
        if not isinstance(data, dict):
            raise CliError(f"impact: {context_file} does not hold a JSON object; nothing recorded")
    written: Dict[str, List[str]] = {}
    for r in results:
        key = context_key(r.account, r.region, r.stack.stack_name)
        written[key] = deployed_instance_ids(r.deployed)
    data.update(written)
    tmp = context_file.with_name(context_file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, context_file)
    return written
