"""``AuditBacklogAssociation``: tunes machines that already run, through SSM State Manager, with no restart.

User data runs once per instance, so a deployed fleet keeps its old limit. This construct adds, to one stack:

- an ``AWS::SSM::Document`` (Command, schema 2.2, one ``aws:runShellScript`` step behind a Linux
  ``precondition``) whose commands are the boot script ``userdata/audit-backlog.sh``, rendered by
  :func:`.user_data.render_run_command` (the same renderer as the user data block, never a copy) in ``auto``
  mode: each instance computes the limit from its own MemTotal with the same policy as the aspect. Its exit
  status is the script's: non-zero when the limit could not be applied, verified or persisted;
- an ``AWS::SSM::Association`` running it on the stack's instances (``tag:aws:cloudformation:stack-name``,
  which CloudFormation puts on its Instances and on its Auto Scaling groups' instances), or on the targets the
  user gives. The first run happens when the association is created, then on ``schedule``; with
  ``sync_compliance="AUTO"`` a failed run makes the instance NON_COMPLIANT (read by AWS Config's
  ``ec2-managedinstance-association-compliance-status-check`` and Security Hub SSM.3);
- optionally (``ssm_permissions=True``), ``AmazonSSMManagedInstanceCore`` on the roles of the stack's
  Instances, launch templates and Auto Scaling groups, with a warning where a launch has no role it can see.

The values reach the command as integers validated here and in :class:`.user_data.BlockInputs`; the
document has no parameters, so nothing a user types at run time reaches the shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jsii
from aws_cdk import Annotations, AspectPriority, Aspects, Aws, CfnResource, IAspect, Stack, Token
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ssm as ssm
from constructs import Construct, IConstruct

from .policy import BacklogPolicy
from .tuning_options import TuningOptions, validate_flag
from .user_data import BlockInputs, render_run_command

__all__ = ["AuditBacklogAssociation", "AssociationOptions", "AssociationTarget", "STACK_NAME_TAG"]

#: The tag CloudFormation puts on a stack's instances and its Auto Scaling groups' instances.
STACK_NAME_TAG = "aws:cloudformation:stack-name"
#: Construct id of the association ``AuditBacklog.apply_to(app, association=...)`` adds to each stack.
DEFAULT_ID = "AuditBacklogAssociation"
#: The managed policy that lets the SSM agent register the instance and run commands.
MANAGED_INSTANCE_POLICY = "AmazonSSMManagedInstanceCore"
#: Warning id where ``ssm_permissions=True`` finds a launch without a role it can change.
NO_ROLE_WARNING = "cdk-audit-backlog:association.no-role"
STEP_NAME = "setAuditBacklogLimit"
#: What the state file and the result line give as the limit's source on machines tuned by the association.
SOURCE = "ssm-association"

_NAME_RE = re.compile(r"^[a-zA-Z0-9_.\-]{3,128}$")
# SSM reserves these document name prefixes (case-insensitive; AWSEC2, AWSSupport... start with "aws").
_RESERVED_PREFIXES = ("aws", "amazon", "amzn")
_RATE_RE = re.compile(r"^rate\(([1-9][0-9]*) (minutes?|hours?|days?)\)$")
_CRON_RE = re.compile(r"^cron\(\S+( \S+){5}\)$")
_MAX_CONCURRENCY_RE = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
_MAX_ERRORS_RE = re.compile(r"^([1-9][0-9]*|0|[1-9][0-9]%|[0-9]%|100%)$")
_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED")
_SYNC = ("AUTO", "MANUAL")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_TAG_KEY_RE = re.compile(r"^[\w .:/=+\-@]{1,128}$")
LAUNCH_TYPES = ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate", "AWS::AutoScaling::LaunchConfiguration")


def _literal(value: Any) -> bool:
    """A plain string (not a CDK token, which is only known at deploy time)."""
    return isinstance(value, str) and not Token.is_unresolved(value)


@dataclass(frozen=True)
class AssociationTarget:
    """Which managed instances the association runs on (one CloudFormation ``Target``).

    Use the class methods: :meth:`stack_instances`, :meth:`tag`, :meth:`all_managed_instances`.
    """

    key: str
    values: Tuple[str, ...]

    @classmethod
    def stack_instances(cls) -> "AssociationTarget":
        """The instances of the stack the association is in: its Instances and its Auto Scaling groups'
        instances, which CloudFormation tags with ``aws:cloudformation:stack-name``."""
        return cls(f"tag:{STACK_NAME_TAG}", (Aws.STACK_NAME,))

    @classmethod
    def tag(cls, key: str, *values: str) -> "AssociationTarget":
        """Instances whose tag ``key`` has one of ``values`` (1..50), e.g. a Karpenter node pool:
        ``AssociationTarget.tag("karpenter.sh/nodepool", "default")``."""
        if not _literal(key) or not _TAG_KEY_RE.match(key) or key.startswith("tag:"):
            raise ValueError(
                "targets: tag key must be 1..128 letters, digits, spaces or _.:/=+-@ without 'tag:', got "
                f"{key!r}"
            )
        if not 1 <= len(values) <= 50:
            raise ValueError(f"targets: tag {key!r} needs 1..50 values, got {len(values)}")
        for v in values:
            if not isinstance(v, str) or (not Token.is_unresolved(v) and not 0 < len(v) <= 256):
                raise ValueError(
                    f"targets: tag {key!r} values must be strings of 1..256 characters, got {v!r}"
                )
        return cls(f"tag:{key}", tuple(values))

    @classmethod
    def all_managed_instances(cls) -> "AssociationTarget":
        """Every managed instance of the account and region (launched by CDK or not)."""
        return cls("InstanceIds", ("*",))


@dataclass(frozen=True)
class AssociationOptions:
    """How the association runs; the same keywords as :class:`AuditBacklogAssociation`'s fleet options.

    Used by ``AuditBacklog.apply_to(app, association=AssociationOptions(...))`` (``association=True`` takes
    these defaults). Targets and names are not options here: each stack gets its own association, targeting
    that stack's instances, with names CloudFormation generates.

    :param schedule: when it runs again after the first run (which happens when the association is created):
        ``rate(N minutes)`` (N >= 30), ``rate(N hours)``, ``rate(N days)`` (singular unit for 1), or a
        6-field ``cron(...)``. Each run re-applies a limit that drifted. Default: ``rate(1 day)``.
    :param max_concurrency: targets at once, a number or a percentage. Default: ``50%``.
    :param max_errors: failed runs after which State Manager stops sending it to more targets in this run,
        a number or a percentage (an instance without auditd counts as a failure). Default: ``25%``.
    :param compliance_severity: CRITICAL, HIGH, MEDIUM, LOW or UNSPECIFIED. Default: ``MEDIUM``.
    :param sync_compliance: ``AUTO`` (the run's status sets the instance's association compliance) or
        ``MANUAL``. Default: ``AUTO``.
    :param output_bucket_name: an S3 bucket for the command's full output. Default: None (console only).
    :param output_key_prefix: key prefix in that bucket. Default: None (the bucket's root).
    :param ssm_permissions: add ``AmazonSSMManagedInstanceCore`` (and ``s3:PutObject`` on the output
        location, if any) to the roles of this stack's Instances, launch templates and Auto Scaling groups;
        a launch without a role it can see gets a warning. Default: False (the instances are managed already).
    """

    schedule: str = "rate(1 day)"
    max_concurrency: str = "50%"
    max_errors: str = "25%"
    compliance_severity: str = "MEDIUM"
    sync_compliance: str = "AUTO"
    output_bucket_name: Optional[str] = None
    output_key_prefix: Optional[str] = None
    ssm_permissions: bool = False

    def __post_init__(self) -> None:
        validate_schedule(self.schedule)
        for name, rx in (("max_concurrency", _MAX_CONCURRENCY_RE), ("max_errors", _MAX_ERRORS_RE)):
            value = getattr(self, name)
            if not isinstance(value, str) or not rx.match(value):
                raise ValueError(
                    f"{name} must be a number or a percentage matching {rx.pattern}, got {value!r}"
                )
        if self.compliance_severity not in _SEVERITIES:
            raise ValueError(
                f"compliance_severity must be one of {', '.join(_SEVERITIES)}, got "
                f"{self.compliance_severity!r}"
            )
        if self.sync_compliance not in _SYNC:
            raise ValueError(f"sync_compliance must be AUTO or MANUAL, got {self.sync_compliance!r}")
        bucket = self.output_bucket_name
        if bucket is not None and not (
            isinstance(bucket, str) and (Token.is_unresolved(bucket) or _BUCKET_RE.match(bucket))
        ):
            raise ValueError(
                f"output_bucket_name must be an S3 bucket name (3..63 of a-z 0-9 . -), got {bucket!r}"
            )
        prefix = self.output_key_prefix
        if prefix is not None:
            if bucket is None:
                raise ValueError("output_key_prefix needs output_bucket_name")
            if not isinstance(prefix, str) or not 0 < len(prefix) <= 500:
                raise ValueError(f"output_key_prefix must be a string of 1..500 characters, got {prefix!r}")
        validate_flag("ssm_permissions", self.ssm_permissions)


def validate_schedule(schedule: Any) -> None:
    if isinstance(schedule, str):
        m = _RATE_RE.match(schedule)
        if m:
            n, unit = int(m.group(1)), m.group(2)
            singular = not unit.endswith("s")
            if unit.startswith("minute") and n < 30:
                raise ValueError(f"schedule: State Manager runs at most every 30 minutes, got {schedule!r}")
            if singular != (n == 1):
                raise ValueError(
                    f"schedule: write rate(1 {unit.rstrip('s')}) or rate(N {unit.rstrip('s')}s), got "
                    f"{schedule!r}"
                )
            return
        if _CRON_RE.match(schedule):
            return
    raise ValueError(
        "schedule must be 'rate(N minutes|hours|days)' (N >= 30 for minutes) or a 6-field 'cron(...)', got "
        f"{schedule!r}"
    )


def validate_document_name(name: Any, option: str = "document_name") -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{option} must be 3..128 of letters, digits, _ . -, got {name!r}")
    if option == "document_name" and name.lower().startswith(_RESERVED_PREFIXES):
        raise ValueError(
            f"document_name must not start with a prefix SSM reserves (aws, amazon, amzn), got {name!r}"
        )


class AuditBacklogAssociation(Construct):
    """Tunes the audit backlog of machines that already run, through an SSM State Manager association.

    ``AuditBacklog.apply_to(app, association=True)`` adds one to every stack with an EC2 launch; add it
    yourself for explicit targets or names.

    :param targets: where it runs, 1..5 :class:`AssociationTarget` (several are ANDed by SSM).
        Default: ``[AssociationTarget.stack_instances()]`` (this stack's Instances and Auto Scaling
        instances).
    :param backlog_limit: a fixed limit, 1..2147483647. Default: None (each instance computes it at run time
        from its MemTotal with ``policy``: "auto").
    :param policy: Default: ``BacklogPolicy()``.
    :param backlog_wait_time: kernel ticks, 0..60000. Default: None (left as it is).
    :param kernel_cmdline: also set ``audit_backlog_limit=N`` for all kernels (next boot). Default: False.
    :param install_auditd: install auditd where it is missing. Default: False.
    :param allow_lower: lower a larger limit the machine has. Default: False.
    :param association_name: Default: None (CloudFormation generates one).
    :param document_name: not starting with aws, amazon or amzn. Default: None (CloudFormation generates one).
    :param compliance: a hardening benchmark's floor, ``"stig"`` or ``"cis"`` (see ``AuditBacklog``).
        Default: None.
    :param monitor_interval: seconds between two samples of the audit status published to the CloudWatch
        agent (the script installs the sampler's systemd timer on each machine), 10..3600. Default: None (no
        sampler).
    :param schedule, max_concurrency, max_errors, compliance_severity, sync_compliance, output_bucket_name,
        output_key_prefix, ssm_permissions: see :class:`AssociationOptions` (same defaults).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        targets: Optional[Sequence[AssociationTarget]] = None,
        backlog_limit: Optional[int] = None,
        policy: Optional[BacklogPolicy] = None,
        backlog_wait_time: Optional[int] = None,
        kernel_cmdline: bool = False,
        install_auditd: bool = False,
        allow_lower: bool = False,
        association_name: Optional[str] = None,
        document_name: Optional[str] = None,
        schedule: str = AssociationOptions.schedule,
        max_concurrency: str = AssociationOptions.max_concurrency,
        max_errors: str = AssociationOptions.max_errors,
        compliance_severity: str = AssociationOptions.compliance_severity,
        sync_compliance: str = AssociationOptions.sync_compliance,
        output_bucket_name: Optional[str] = None,
        output_key_prefix: Optional[str] = None,
        ssm_permissions: bool = False,
        compliance: Optional[str] = None,
        monitor_interval: Optional[int] = None,
    ) -> None:
        # Validate everything before any child exists (a ValueError leaves no half-built construct behind).
        options = AssociationOptions(
            schedule=schedule,
            max_concurrency=max_concurrency,
            max_errors=max_errors,
            compliance_severity=compliance_severity,
            sync_compliance=sync_compliance,
            output_bucket_name=output_bucket_name,
            output_key_prefix=output_key_prefix,
            ssm_permissions=ssm_permissions,
        )
        if targets is None:
            targets = [AssociationTarget.stack_instances()]
        if (
            isinstance(targets, (str, bytes))
            or not isinstance(targets, Sequence)
            or not 1 <= len(targets) <= 5
            or not all(isinstance(t, AssociationTarget) for t in targets)
        ):
            raise ValueError(f"targets must be a list of 1..5 AssociationTarget, got {targets!r}")
        if len(targets) > 1 and any(t.key == "InstanceIds" for t in targets):
            raise ValueError("targets: all_managed_instances() cannot be combined with other targets")
        #: The tuning options (no boot unit: the association runs again on its schedule instead).
        self.tuning = TuningOptions(
            backlog_limit=backlog_limit,
            policy=policy,
            backlog_wait_time=backlog_wait_time,
            kernel_cmdline=kernel_cmdline,
            install_auditd=install_auditd,
            allow_lower=allow_lower,
            boot_unit=False,
            compliance=compliance,
            monitor_interval=monitor_interval,
        )
        if association_name is not None:
            validate_document_name(association_name, "association_name")
        if document_name is not None:
            validate_document_name(document_name)
        inputs = BlockInputs.for_options(self.tuning, target=self.tuning.backlog_limit, source=SOURCE)
        super().__init__(scope, id)
        self.options = options
        self.targets = list(targets)
        #: The shell lines of the document's runShellScript step (what the SSM agent writes to a file and
        #: runs).
        self.run_command: List[str] = render_run_command(inputs)

        self.document = ssm.CfnDocument(
            self,
            "Document",
            document_type="Command",
            document_format="JSON",
            name=document_name,
            # A change of the script makes a new version of the same document (the association runs
            # $LATEST), rather than a replacement, which a named document could not have.
            update_method="NewVersion",
            content={
                "schemaVersion": "2.2",
                "description": (
                    "cdk-audit-backlog: sets the Linux kernel audit backlog limit (auditctl -b) for this "
                    "machine's memory, persists it in the audit rules and verifies it, with no restart of "
                    "auditd or the instance. Exits non-zero when the limit could not be applied, verified or "
                    "persisted, or auditctl is missing; immutable audit rules are persisted for the next "
                    "boot."
                ),
                "mainSteps": [
                    {
                        "action": "aws:runShellScript",
                        "name": STEP_NAME,
                        "precondition": {"StringEquals": ["platformType", "Linux"]},
                        "inputs": {"runCommand": self.run_command},
                    }
                ],
            },
        )
        output_location = None
        if output_bucket_name is not None:
            output_location = ssm.CfnAssociation.InstanceAssociationOutputLocationProperty(
                s3_location=ssm.CfnAssociation.S3OutputLocationProperty(
                    output_s3_bucket_name=output_bucket_name, output_s3_key_prefix=output_key_prefix
                )
            )
        self.association = ssm.CfnAssociation(
            self,
            "Association",
            name=self.document.ref,
            document_version="$LATEST",
            association_name=association_name,
            targets=[
                ssm.CfnAssociation.TargetProperty(key=t.key, values=list(t.values)) for t in self.targets
            ],
            schedule_expression=schedule,
            max_concurrency=max_concurrency,
            max_errors=max_errors,
            compliance_severity=compliance_severity,
            sync_compliance=sync_compliance,
            output_location=output_location,
        )
        if ssm_permissions:
            stack = Stack.of(self)
            if not any(isinstance(a, _ManagedInstancePermissions) for a in Aspects.of(stack).all):
                Aspects.of(stack).add(_ManagedInstancePermissions(options), priority=AspectPriority.MUTATING)

    @classmethod
    def from_options(
        cls, scope: Construct, id: str, tuning: TuningOptions, fleet: Optional[AssociationOptions] = None
    ) -> "AuditBacklogAssociation":
        """An association for the stack's instances with ``tuning`` (e.g. an ``AuditBacklog``'s ``options``;
        its ``boot_unit`` and ``compact_block`` do not apply here) and how it runs (``fleet``, default
        ``AssociationOptions()``)."""
        if not isinstance(tuning, TuningOptions):
            raise ValueError(f"tuning must be a TuningOptions, got {tuning!r}")
        fleet = AssociationOptions() if fleet is None else fleet
        if not isinstance(fleet, AssociationOptions):
            raise ValueError(f"fleet must be an AssociationOptions, got {fleet!r}")
        keywords = tuning.as_keywords()
        # Neither applies to a run command: it runs again on its schedule (no boot unit), and an SSM document
        # holds 64 KB, so the script stays plain and readable in the console.
        del keywords["boot_unit"], keywords["compact_block"]
        return cls(
            scope, id, **keywords, **{f.name: getattr(fleet, f.name) for f in fields(AssociationOptions)}
        )


@jsii.implements(IAspect)
class _ManagedInstancePermissions:
    """Adds ``AmazonSSMManagedInstanceCore`` to the role of every launch of one stack (an aspect, so launches
    created after the association are covered too)."""

    def __init__(self, options: AssociationOptions) -> None:
        self.options = options
        self._policy: Dict[int, iam.IManagedPolicy] = {}

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource) or node.cfn_resource_type not in LAUNCH_TYPES:
            return
        role, why = _role_of(node)
        if role is None:
            Annotations.of(node).add_warning_v2(
                NO_ROLE_WARNING,
                f"cdk-audit-backlog: {node.node.path} gets no {MANAGED_INSTANCE_POLICY} from "
                f"AuditBacklogAssociation(ssm_permissions=True): {why}. Its instances are tuned by the "
                f"association only if they are managed instances already.",
            )
            return
        stack = Stack.of(node)
        key = id(stack)
        if key not in self._policy:
            self._policy[key] = iam.ManagedPolicy.from_aws_managed_policy_name(MANAGED_INSTANCE_POLICY)
        role.add_managed_policy(self._policy[key])  # the role renders its ARNs as a set: idempotent
        bucket = self.options.output_bucket_name
        if bucket is not None:
            prefix = self.options.output_key_prefix or ""
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["s3:PutObject"],
                    resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}/{prefix}*"],
                )
            )


def _role_of(launch: CfnResource) -> Tuple[Optional[iam.Role], str]:
    """The role the L2 around a launch L1 exposes, or None and why not."""
    parent = launch.node.scope
    role: Any = None
    if isinstance(parent, (ec2.Instance, ec2.LaunchTemplate)):
        role = parent.role
    elif isinstance(parent, autoscaling.AutoScalingGroup):  # its launch configuration
        try:
            role = parent.role
        except Exception:  # jsii raises when the group's launch template exposes no role
            role = None
    else:
        return None, "it is a raw L1 resource, whose instance profile the construct cannot trace to a role"
    if role is None:
        return None, "it has no role (give it one with role=...)"
    if not isinstance(role, iam.Role):
        return None, "its role is imported, so this app cannot change its policies"
    return role, ""
