"""``AuditBacklogCheck``: read-only enforcement of the backlog policy, as a CDK policy-validation plugin.

For teams that enforce through ``cdk synth`` failing, the way cdk-nag 3.x is used::

    from aws_cdk import Validations
    from cdk_audit_backlog.check import AuditBacklogCheck

    Validations.of(app).add_plugins(AuditBacklogCheck())

It never changes the app: it reads the synthesized templates (so it sees exactly what will be deployed,
raw overrides and escape hatches included), decodes each launch's user data with :mod:`.testing` and
compares the block it finds with the policy. A plugin registered on the app sees every stack of the app,
those inside Stages too; nested stacks are followed through their template files.

Rules (ids for ``Validations.of(scope).acknowledge(Acknowledgment(id="CdkAuditBacklog::<rule>", reason=…))``,
which CDK applies to the resource it is called on and to everything beneath it):

``Untuned``
    an EC2 Linux launch whose user data carries no ``cdk-audit-backlog`` block.
``TunedMoreThanOnce``
    the user data carries more than one block (two tools, or a block copied by hand).
``BelowPolicy``
    the block sets a limit below what the policy gives an instance type the resource may launch (a group of
    types with different limits needs ``auto``, which the aspect writes, or the largest of them); or the
    type is not known at synth time and the block sets a fixed limit below the policy's maximum (only
    ``auto``, computed at boot, is right then); or the block's ``auto`` uses a weaker policy (``auto`` on a
    group passes whenever its policy is at least the check's: each machine computes its own limit).
``MalformedBlock``
    a block whose ``CAB_TARGET`` line is missing or unreadable, or a compact block whose body does not decode
    (Base64 of gzip of text): it would run nothing at boot. A compact block is otherwise checked as a plain
    one (its ``CAB_*`` lines and markers are plain text).
``BlockNotFirst``
    the block does not directly follow the ``#!`` line of its script (or MIME part): lines before it, such
    as an ``exit 0`` or a failing command under ``set -e``, can stop the script before it runs.

Not violations: Windows (``<powershell>`` / ``<script>`` / EC2Launch v2 YAML) and Bottlerocket (TOML
``[settings…]``) user data, which have no auditd to tune, and resources whose Metadata says ``skipped``
(``AuditBacklog.skip()`` or an ``exclude`` predicate; the aspect warned about those at synth), and
Instances whose Metadata says their user data was kept because they already run (``deployed``, see
:mod:`.running_instances`) when an ``AWS::SSM::Association`` in the same template tunes them.

Which instance types a resource launches, from the template alone:

- ``AWS::EC2::Instance`` and ``AWS::AutoScaling::LaunchConfiguration``: their ``InstanceType``. An instance
  with no user data of its own that launches from a launch template of the same template runs that
  template's user data: it is checked there, with the instance's type.
- ``AWS::EC2::LaunchTemplate``: for each Auto Scaling group using it, the ``InstanceType`` of its
  ``MixedInstancesPolicy`` overrides (overrides replace the template's own type at launch;
  ``InstanceRequirements`` means "not known"), else the template's own ``LaunchTemplateData.InstanceType``;
  for each EKS node group, its ``InstanceTypes``, else the template's own; for each instance launched
  from it, the instance's type, else the template's own; with no user at all, the template's own type.
  Each type must get at least its own policy limit, so a fixed limit is held to the largest of them.
- A type that is a token or missing from the bundled table is "not known at synth time".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jsii
from aws_cdk import (
    IPolicyValidationContext,
    IPolicyValidationPlugin,
    PolicyValidationPluginReport,
    PolicyViolatingResource,
    PolicyViolation,
)

from .cloud_assembly import nested_stack_templates
from .compliance import profile, raise_policy
from .deployed_context import ASSOCIATION_TYPE, user_data_kept
from .policy import BacklogPolicy
from .template_relations import LAUNCH_TEMPLATE, launch_template_of, launch_template_users
from .testing import (
    BLOCK_BEGIN,
    LAUNCH_TYPES,
    METADATA_KEY,
    blocks as read_blocks,
    decode_user_data,
    shell_parts,
    template_dict,
    user_data_value,
)

__all__ = ["AuditBacklogCheck", "Finding", "RULES", "PLUGIN_NAME"]

#: The plugin's name in CDK's validation report; also the prefix of acknowledgment ids.
PLUGIN_NAME = "CdkAuditBacklog"

#: Rule id -> what it means (the description in the report).
RULES: Dict[str, str] = {
    "Untuned": "EC2 Linux launch whose user data does not set the audit backlog limit (auditctl -b).",
    "TunedMoreThanOnce": "EC2 launch whose user data carries more than one cdk-audit-backlog block.",
    "BelowPolicy": "EC2 launch whose audit backlog limit is below the policy for its instance type.",
    "MalformedBlock": (
        "EC2 launch whose cdk-audit-backlog block has no readable CAB_TARGET line, or a compact body that "
        "does not decode."
    ),
    "BlockNotFirst": "EC2 launch whose cdk-audit-backlog block does not come right after the shebang line.",
    "BelowComplianceFloor": "EC2 launch whose audit backlog settings fail the hardening benchmark's floor.",
}

_FIX = (
    "Tune it with cdk_audit_backlog.AuditBacklog.apply_to(app), or acknowledge it with "
    "Validations.of(construct).acknowledge()."
)

MemoryOf = Callable[[str], Optional[int]]


@dataclass(frozen=True)
class Finding:
    """One violation.

    :param rule: a key of :data:`RULES`.
    :param logical_id: the launch resource's logical id.
    :param resource_type: its CloudFormation type.
    :param message: what is wrong with this resource, in one sentence.
    :param template_path: the template file it was found in, when known.
    :param required: the limit the policy asks for, or None when only ``auto`` is right (type unknown).
    :param found: the limit found (``"auto"`` for auto), or None when the resource has no block.
    """

    rule: str
    logical_id: str
    resource_type: str
    message: str
    template_path: Optional[str] = None
    required: Optional[int] = None
    found: Optional[Any] = None


def _default_memory_of(instance_type: str) -> Optional[int]:
    from .instance_memory import memory_mib

    return memory_mib(instance_type)


@jsii.implements(IPolicyValidationPlugin)
class AuditBacklogCheck:
    """Reports every EC2 Linux launch that is not tuned, tuned twice, or tuned below the policy.

    :param policy: the policy a launch must meet. Default: ``BacklogPolicy()`` (the aspect's default).
    :param memory_of: instance type -> MiB, None when unknown. Default: the bundled table
        (``cdk_audit_backlog.instance_memory.memory_mib``).
    :param fail_synth: report findings as errors, which make ``cdk synth`` fail; False reports them as
        warnings (printed, synth succeeds unless run as ``cdk synth --strict``), for adopting the check
        before the whole app is tuned. Default: True.
    :param compliance: also hold every launch to a hardening benchmark's floor, ``"stig"`` or ``"cis"`` (see
        ``AuditBacklog``'s option of the same name): a launch short of it is a ``BelowComplianceFloor``
        finding naming the benchmark rule, and the policy's minimum is raised to the floor. Default: None.
    """

    def __init__(
        self,
        *,
        policy: Optional[BacklogPolicy] = None,
        memory_of: Optional[MemoryOf] = None,
        fail_synth: bool = True,
        compliance: Optional[str] = None,
    ) -> None:
        self._preset = profile(compliance)
        if not isinstance(fail_synth, bool):
            raise ValueError(f"fail_synth must be True or False, got {fail_synth!r}")
        if policy is not None and not isinstance(policy, BacklogPolicy):
            raise ValueError(f"policy must be a BacklogPolicy, got {policy!r}")
        if memory_of is not None and not callable(memory_of):
            raise ValueError(f"memory_of must be a callable taking an instance type name, got {memory_of!r}")
        self._policy = policy or BacklogPolicy()
        if self._preset is not None:  # held to the floor: the policy's minimum is raised to it
            self._policy = raise_policy(self._policy, self._preset)
        self._memory_of: MemoryOf = memory_of or _default_memory_of
        self._fail_synth = fail_synth
        #: Launch resources examined and findings of the last ``validate`` call (CDK leaves a plugin
        #: with no violations out of its report; these show it ran).
        self.last_checked: List[str] = []
        self.last_findings: List[Finding] = []

    # -- IPolicyValidationPlugin ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def version(self) -> Optional[str]:
        try:
            from importlib.metadata import version

            return version("cdk-audit-backlog")
        except Exception:  # not installed as a distribution (running from a checkout)
            return None

    @property
    def rule_ids(self) -> Optional[List[str]]:
        return list(RULES)

    @property
    def policy(self) -> BacklogPolicy:
        return self._policy

    def validate(self, context: IPolicyValidationContext) -> PolicyValidationPluginReport:
        """Called by CDK after synthesis with every template of the app; never writes anything."""
        findings: List[Finding] = []
        checked: List[str] = []
        for path in context.template_paths:
            findings.extend(self.check_template(path, template_path=path, checked=checked))
        self.last_checked, self.last_findings = checked, findings
        violations = [
            PolicyViolation(
                rule_name=f.rule,
                description=f"{RULES[f.rule]} {f.message}",
                fix=_FIX,
                severity="error" if self._fail_synth else "warning",
                violating_resources=[
                    PolicyViolatingResource(
                        resource_logical_id=f.logical_id,
                        template_path=f.template_path or "",
                        locations=[_user_data_location(f.resource_type)],
                    )
                ],
            )
            for f in findings
        ]
        return PolicyValidationPluginReport(
            success=not (violations and self._fail_synth), violations=violations
        )

    # -- plain Python entry point -----------------------------------------------------------------

    def check_template(
        self, template: Any, *, template_path: Optional[str] = None, checked: Optional[List[str]] = None
    ) -> List[Finding]:
        """Findings for one template (a dict, an ``assertions.Template`` or a template file path).

        Nested stacks are followed when their template file can be found next to ``template_path``
        (CDK writes them into the same cloud assembly directory). ``checked``, when given, receives
        ``"<template>:<logical id>"`` for every launch resource examined.
        """
        if template_path is None and isinstance(template, (str, os.PathLike)):
            template_path = os.fspath(template)
        doc = template_dict(template)
        resources: Mapping[str, Any] = doc.get("Resources") or {}
        findings: List[Finding] = []
        for logical_id, resource in resources.items():
            if not isinstance(resource, Mapping) or resource.get("Type") not in LAUNCH_TYPES:
                continue
            if checked is not None:
                checked.append(f"{os.path.basename(template_path or '')}:{logical_id}")
            finding = self._check_launch(logical_id, resource, resources, template_path)
            if finding is not None:
                findings.append(finding)
        if template_path is not None:
            for nested in nested_stack_templates(template_path, resources):
                findings.extend(self.check_template(nested, template_path=nested, checked=checked))
        return findings

    def _check_launch(
        self,
        logical_id: str,
        resource: Mapping[str, Any],
        resources: Mapping[str, Any],
        template_path: Optional[str],
    ) -> Optional[Finding]:
        resource_type = resource["Type"]

        def finding(rule: str, message: str, required: Optional[int] = None, found: Any = None) -> Finding:
            return Finding(rule, logical_id, resource_type, message, template_path, required, found)

        metadata = (resource.get("Metadata") or {}).get(METADATA_KEY)
        if isinstance(metadata, Mapping) and "skipped" in metadata:
            return None
        if user_data_kept(dict(metadata) if isinstance(metadata, Mapping) else None):
            # Already running: the aspect kept its user data (a change would stop and start it).
            if any(isinstance(r, Mapping) and r.get("Type") == ASSOCIATION_TYPE for r in resources.values()):
                return None
            return finding("Untuned", "It already runs, so its user data was kept, and no "
                           "AWS::SSM::Association in its template tunes it.")
        value = user_data_value(resource)
        if value is None and launch_template_of(resource, resources) is not None:
            return None  # an instance without user data of its own runs its launch template's, checked there
        try:
            text = None if value is None else decode_user_data(value)
        except ValueError as e:
            return finding("Untuned", f"Its user data cannot be read: {e}.")
        if text is not None and _not_linux(text) is not None:
            return None
        found = read_blocks(text) if text else []
        blocks = [b.settings for b in found]
        if not blocks:
            what = "It has no user data." if text is None else "Its user data has no cdk-audit-backlog block."
            return finding("Untuned", what)
        if len(blocks) > 1:
            return finding(
                "TunedMoreThanOnce",
                f"Its user data carries {len(blocks)} blocks; the last one to run wins at boot.",
            )
        if not _block_comes_first(text or ""):
            return finding(
                "BlockNotFirst",
                "Lines before the block may exit or fail before it runs; the block must directly follow the "
                "'#!' line of its script.",
            )
        if found[0].compact and found[0].script is None:
            return finding(
                "MalformedBlock", "Its compact block's body is not Base64 of gzip of text: nothing would run."
            )
        settings = blocks[0]
        target = settings.get("CAB_TARGET")
        if target is None or not (target == "auto" or (target.isdigit() and not target.startswith("0"))):
            return finding("MalformedBlock", f"Its block has CAB_TARGET={target!r}.")

        short = self._short_of_floor(settings)
        if short:
            return finding("BelowComplianceFloor", short)
        types = _instance_types(logical_id, resources)
        required, why = self._required(types)
        if target == "auto":
            weaker = self._weaker_auto(settings)
            if weaker:
                return finding("BelowPolicy", f"Its block computes auto with {weaker}.", required, "auto")
            return None
        limit = int(target)
        if required is None:
            if limit >= self._policy.maximum:
                return None
            return finding(
                "BelowPolicy",
                f"It sets {limit}, but {why}: only auto (computed at boot) or a limit of at "
                f"least the policy maximum {self._policy.maximum} is sure to meet the policy.",
                None,
                limit,
            )
        if limit < required:
            return finding(
                "BelowPolicy", f"It sets {limit}; the policy asks for {required} ({why}).", required, limit
            )
        return None

    def _short_of_floor(self, settings: Mapping[str, str]) -> Optional[str]:
        """What a block lacks for the compliance preset, naming the benchmark rule; None when it meets it."""
        preset = self._preset
        if preset is None:
            return None
        floor, target = preset.floor, settings.get("CAB_TARGET", "")
        problems = []
        if target == "auto":
            minimum = settings.get("CAB_MIN", "")
            if not minimum.isdigit() or int(minimum) < floor:
                problems.append(f"its block computes auto with a minimum of {minimum or '?'}, below {floor}")
        elif int(target) < floor:
            problems.append(f"it sets {target}, below {floor}")
        if settings.get("CAB_KERNEL_CMDLINE") != "1":
            problems.append("it does not set audit_backlog_limit on the kernel command line")
        elif preset.cmdline_exact:
            on_cmdline = settings.get("CAB_CMDLINE_LIMIT") or target
            if on_cmdline != str(floor):
                problems.append(
                    f"the kernel command line gets audit_backlog_limit={on_cmdline}, not exactly {floor}"
                )
        if not problems:
            return None
        return f"{preset.rule_text}: {'; '.join(problems)}. Use AuditBacklog(compliance={preset.name!r})."

    def _required(self, types: Sequence[Optional[str]]) -> Tuple[Optional[int], str]:
        """(limit the policy asks for or None when a type is unknown, explanation).

        Every machine the launch starts must meet the policy for its own type: a fixed limit must be the
        largest of their limits (for a group whose types map to different limits, only ``auto`` or that
        largest limit passes; the aspect writes ``auto`` there).
        """
        if not types:
            return None, "its instance type is not known at synth time"
        limits: List[Tuple[int, int, str]] = []
        for t in types:
            memory = self._memory_of(t) if isinstance(t, str) else None
            if memory is None:
                shown = repr(t) if isinstance(t, str) else "a token or instance requirements"
                return None, f"instance type {shown} has no known memory at synth time"
            try:
                limit = self._policy.limit_for_memory(memory)
            except ValueError as e:
                raise ValueError(f"memory_of({t!r}) must return None or a whole number of MiB: {e}") from None
            limits.append((limit, memory, t))  # type: ignore[arg-type]
        limit, memory, largest = max(limits)
        names = sorted({t for _, _, t in limits})
        if len(names) == 1:
            return limit, f"{largest}, {memory} MiB, is what it launches"
        return limit, (
            f"{largest}, {memory} MiB, has the largest limit of the types it launches ({', '.join(names)}); "
            "each machine must meet the policy for its own type, so a group of types with different limits "
            "needs auto"
        )

    def _weaker_auto(self, settings: Mapping[str, str]) -> Optional[str]:
        """Why an ``auto`` block computes less than the policy would, or None when it never does."""
        p = self._policy
        wanted = {"CAB_FRACTION_PPM": p.fraction_ppm, "CAB_MIN": p.minimum, "CAB_MAX": p.maximum}
        weaker = []
        for key, value in wanted.items():
            got = settings.get(key, "")
            if not got.isdigit() or int(got) < value:
                weaker.append(f"{key}={got or 'missing'} (policy {value})")
        return ", ".join(weaker) or None


# -- helpers --------------------------------------------------------------------------------------


def _user_data_location(resource_type: str) -> str:
    if resource_type == LAUNCH_TEMPLATE:
        return "Properties/LaunchTemplateData/UserData"
    return "Properties/UserData"


def _block_comes_first(user_data: str) -> bool:
    """Whether the script holding the block starts with a ``#!`` line directly followed by the block."""
    for script in shell_parts(user_data):
        lines = script.lstrip("\ufeff").splitlines()
        if BLOCK_BEGIN in lines:
            return len(lines) > 1 and lines[0].startswith("#!") and lines[1] == BLOCK_BEGIN
    return False


#: How the user data formats cloud-init runs begin (lower case); content after them is never Windows.
_CLOUD_INIT_HEADERS = (
    "#!",
    "#cloud-config",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "#upstart-job",
    "## template: jinja",
    "content-type:",
    "mime-version:",
)


def _not_linux(text: str) -> Optional[str]:
    """The reason ``text`` is user data for a system with no Linux auditd to tune, or None."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.lower().startswith(_CLOUD_INIT_HEADERS):
        return None  # a script, cloud-config or another cloud-init format: Linux
    lowered = stripped.lower()
    if any(tag in lowered for tag in ("<powershell>", "<script>", "<persist>")):
        return "Windows (EC2Launch / EC2Config tags)"
    first = lowered.split("\n", 1)[0].strip()
    if first.startswith("version:") and "\ntasks:" in lowered:
        return "Windows (EC2Launch v2 YAML)"
    for line in stripped.splitlines():
        if line.strip().startswith("[settings"):
            return "Bottlerocket (TOML settings)"
    return None


def _instance_types(logical_id: str, resources: Mapping[str, Any]) -> List[Optional[str]]:
    """Instance types ``logical_id`` may launch (None = not known at synth); empty = none known at all."""
    resource = resources[logical_id]
    props = resource.get("Properties") or {}
    if resource.get("Type") != LAUNCH_TEMPLATE:
        return [_type_or_none(props.get("InstanceType"))]
    data = props.get("LaunchTemplateData") or {}
    own = _type_or_none(data.get("InstanceType")) if "InstanceType" in data else None
    uses = launch_template_users(resources, logical_id)
    if not uses:
        return [own]
    out: List[Optional[str]] = []
    for use in uses:
        if use.instance_types is None:
            out.append(own)
        else:
            out.extend(_type_or_none(t) for t in use.instance_types)
    return out


def _type_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None
