"""``AuditBacklog``: tunes every EC2 Linux launch under a scope.

Two ways in, one decision:

1. ``AuditBacklog.apply_to(scope)`` (the fast path) adds no per-construct aspect: one hidden leaf under the
   scope and under every Stage beneath it decides and writes every launch in one visit per synthesis, in a
   handful of bridge calls (:mod:`.apply_to_hook`).
2. ``Aspects.of(scope).add(AuditBacklog())`` (the plain path, slower: one jsii callback per construct of the
   tree) claims each launch L1 it visits and attaches lazy values that decide at synthesis, so lines added to
   the user data after the aspect (until synthesis) are still kept.

Either way a launch is decided once (:mod:`.launch_tuning`, kept in the app's :mod:`.registry`): the claim of
the aspect nearest to the resource wins; the instance type (or the types of the Auto Scaling groups / node
groups that use a launch template) gives the memory, the policy gives the limit (:mod:`.launch_decision`), and
:mod:`.splice` puts the rendered block into the user data the user's code produced. Launches that cannot be
tuned safely (Windows, Bottlerocket, user data behind a token) keep their user data byte for byte, get
``{"skipped": reason}`` Metadata and a warning with a stable id. Where the plain block would take the user
data over EC2's 16 KB, the compact block goes in; user data over 16 KB even so fails synth (a validation on
that resource only), naming every way out.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import jsii
from aws_cdk import CfnResource, IAspect, Stack, Stage
from constructs import IConstruct

from . import running_instances as running_instances_module
from .apply_to_hook import Hook, add_associations, monitoring_of
from .diagnostics import (
    TUNES_SCOPE,
    is_covered,
    warn_about_inline_launch_specifications,
    warn_about_unreached_stages,
    warn_if_launch_is_out_of_reach,
)
from .launch_decision import exclusion_reason
from .launch_reader import CONSUMER_TYPES, USER_DATA_PATH, SkipMarker, key, skip_marker_reason
from .launch_tuning import EC2_USER_DATA_LIMIT, METADATA_KEY, Tuning
from .monitoring import MONITORING_ID, AuditBacklogMonitoring, MonitoringOptions, monitoring_options
from .policy import BacklogPolicy
from .registry import AppRegistry
from .tuning_options import TuningOptions, validate_flag
from .user_data import BlockInputs

__all__ = ["AuditBacklog", "METADATA_KEY", "EC2_USER_DATA_LIMIT"]


@jsii.implements(IAspect)
class AuditBacklog:
    """Sizes the kernel audit backlog of every EC2 Linux launch under the scope it is added to.

    Add it to an app with :meth:`apply_to` (reaches Stages too, and costs no Python callback per construct),
    or ``Aspects.of(scope).add(AuditBacklog())`` (the plain aspect: one jsii callback per construct of the
    tree).

    :param backlog_limit: a fixed limit for every launch, 1..2147483647. Default: None (chosen per launch
        from the instance type's memory with ``policy``; "auto" at boot where the type is unknown).
    :param policy: how the limit follows memory. Default: ``BacklogPolicy()`` (1 % of memory, 320..262144).
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000 (how long an audited process
        sleeps when the queue is full; 60*HZ is the kernel's default). Default: None (left as the image has
        it).
    :param kernel_cmdline: also set ``audit_backlog_limit=N`` on the kernel command line, which covers the
        boot before auditd starts (takes effect at the next boot). Default: False.
    :param install_auditd: install auditd where the image lacks it. Default: False.
    :param allow_lower: lower a larger limit the image already has. Default: False (never lower).
    :param boot_unit: also install a systemd unit that sizes the limit again on every later boot, before the
        audit rules load (so a stopped, resized and started instance follows its new memory): from MemTotal
        where the limit was chosen from the instance type, or the fixed ``backlog_limit``. Only on systemd
        hosts that merge rules.d with augenrules. Default: True.
    :param compact_block: the block's form: ``None`` plain where it fits, compact (the same script with its
        body gzip-compressed and Base64-encoded, decoded at boot with ``base64 -d | gzip -dc``; its ``CAB_*``
        lines and markers stay plain text) where the plain block would make the user data exceed EC2's
        16,384 bytes; ``True`` always compact; ``False`` always plain. Default: None.
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
    :param compliance: a hardening benchmark's floor with memory-aware sizing above it: ``"stig"`` (exactly
        ``audit_backlog_limit=8192`` on the kernel command line, the rules' ``-b`` at least 8192) or ``"cis"``
        (8192 or more, both). Turns ``kernel_cmdline`` on and raises the policy's minimum to 8192; a launch
        whose smallest type's memory the floor takes more than 5 % of at worst gets a warning. Default: None.
        See :mod:`.compliance`.
    :param monitoring: live health: ``True`` (``MonitoringOptions()``) or a ``monitoring.MonitoringOptions``
        turns the sampler on in every tuned launch's block (``monitor_interval`` = the options' ``interval``)
        and adds one ``AuditBacklogMonitoring`` (CloudWatch agent configuration, alarms, dashboard) to every
        stack with a tuned launch, watching that stack's tuned Instances and Auto Scaling groups. An
        association added by ``apply_to`` installs the sampler on running machines too. Default: None (off).
        See :mod:`.monitoring`.
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
        compact_block: Optional[bool] = None,
        bottlerocket: bool = False,
        exclude: Optional[Callable[[CfnResource], bool]] = None,
        running_instances: str = "keep",
        compliance: Optional[str] = None,
        monitoring: Any = None,
    ) -> None:
        #: The live-health monitoring (None: off), see :mod:`.monitoring`.
        self.monitoring: Optional[MonitoringOptions] = monitoring_options(monitoring)
        #: The tuning options every launch (and an association added by ``apply_to``) is rendered with.
        self.options = TuningOptions(
            backlog_limit=backlog_limit,
            policy=policy,
            backlog_wait_time=backlog_wait_time,
            kernel_cmdline=kernel_cmdline,
            install_auditd=install_auditd,
            allow_lower=allow_lower,
            boot_unit=boot_unit,
            compliance=compliance,
            compact_block=compact_block,
            monitor_interval=None if self.monitoring is None else self.monitoring.interval,
        )
        validate_flag("bottlerocket", bottlerocket)
        if exclude is not None and not callable(exclude):
            raise ValueError(f"exclude must be a callable taking a CfnResource, got {exclude!r}")
        if running_instances not in running_instances_module.RUNNING_INSTANCES:
            allowed = ", ".join(map(repr, running_instances_module.RUNNING_INSTANCES))
            raise ValueError(f"running_instances must be one of {allowed}, got {running_instances!r}")
        self.bottlerocket = bottlerocket
        self.exclude = exclude
        self.running_instances = running_instances
        self._pending_groups: Dict[str, List[CfnResource]] = {}  # the plain path: groups seen before a launch

    # The tuning options, read where the aspect's own keywords are expected.
    backlog_limit = property(lambda self: self.options.backlog_limit)
    policy = property(lambda self: self.options.policy)
    backlog_wait_time = property(lambda self: self.options.backlog_wait_time)
    kernel_cmdline = property(lambda self: self.options.kernel_cmdline)
    install_auditd = property(lambda self: self.options.install_auditd)
    allow_lower = property(lambda self: self.options.allow_lower)
    boot_unit = property(lambda self: self.options.boot_unit)
    compliance = property(lambda self: self.options.compliance)
    compact_block = property(lambda self: self.options.compact_block)

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
            Manager association, same tuning options as the aspect) to every stack with an EC2 launch, Stages
            and nested stacks included; with ``monitoring`` on, it installs the sampler too. Default: False.
        :param options: the aspect's keywords, ``monitoring`` included (one ``AuditBacklogMonitoring`` per
            stack with a tuned launch).
        """
        aspect = cls(**options)
        if association is not False:
            add_associations(scope, aspect, association)
        targets = [scope] + [c for c in scope.node.find_all() if c is not scope and isinstance(c, Stage)]
        for target in targets:
            if not is_covered(target):
                Hook(target, aspect)
        return aspect

    @staticmethod
    def skip(scope: IConstruct, reason: str) -> None:
        """Leaves every launch under ``scope`` untouched; the reason shows in each launch's Metadata."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason must be a non-empty string saying why the launch is not tuned")
        SkipMarker.mark(scope, reason)

    # -- the plain aspect --------------------------------------------------------------------------

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            if isinstance(node, Stage) and node.node.scope is None:
                warn_about_unreached_stages(node, self)
            return
        kind = node.cfn_resource_type
        if kind in USER_DATA_PATH:
            tuning = Tuning.of(node, kind, AppRegistry.of(node))
            tuning.claim(self)
            tuning.attach_lazily()
            if self.monitoring is not None and not self._skips(node):
                self._monitor_launch(node, kind)
        elif kind in CONSUMER_TYPES and not self._skips(node):
            properties = node._cfn_properties
            warn_if_launch_is_out_of_reach(node, kind, properties)
            warn_about_inline_launch_specifications(node, kind, properties)
            if self.monitoring is not None and kind == "AWS::AutoScaling::AutoScalingGroup":
                self._monitor_group(node)

    # The plain aspect decides lazily, at synthesis, after the visits: it watches every launch it claims that
    # is not excluded, and every Auto Scaling group of a stack with such a launch (apply_to's hook watches
    # exactly the launches it tuned and the groups that launch from them).
    def _monitor_launch(self, node: CfnResource, kind: str) -> None:
        stack = Stack.of(node)
        monitoring = monitoring_of(stack, self.monitoring)
        if monitoring is None:
            return
        if monitoring.policy is not None:
            monitoring.grant(node)
        if kind == "AWS::EC2::Instance":
            monitoring.watch(node, node.node.scope)
        for group in self._pending_groups.pop(key(stack), []):
            monitoring.watch(group, group.node.scope)

    def _monitor_group(self, node: CfnResource) -> None:
        stack = Stack.of(node)
        existing = stack.node.try_find_child(MONITORING_ID)
        if isinstance(existing, AuditBacklogMonitoring):
            existing.watch(node, node.node.scope)
        else:
            self._pending_groups.setdefault(key(stack), []).append(node)

    def _skips(self, node: CfnResource) -> bool:
        return bool(skip_marker_reason(node, AppRegistry.of(node)) or exclusion_reason(node, self))

    def block_inputs(self, target: Optional[int], source: str) -> BlockInputs:
        """The block for one launch with this aspect's options (``target`` None: ``auto``)."""
        return BlockInputs.for_options(self.options, target=target, source=source)


setattr(AuditBacklog, TUNES_SCOPE, True)
