"""Karpenter: the ``userData`` of an EC2NodeClass, per AMI family.

Karpenter, not CDK, launches these nodes and picks their instance types, so the aspect never sees them.
This module returns the text to put in ``spec.userData``; Karpenter merges it with what it generates:

- ``AL2023``: Karpenter puts its own NodeConfig part first, then the parts of this MIME document.
  Ours is a ``text/x-shellscript`` part (the block rendered by :mod:`.user_data` from
  ``userdata/audit-backlog.sh``); cloud-init runs it in its final stage, and ``nodeadm-run`` starts the
  kubelet only after cloud-final, so the limit is set before the node takes pods.
- ``AL2``: the user's parts run before Karpenter's ``bootstrap.sh`` part: ours first among them.
- ``Bottlerocket``: TOML only; the limit goes into ``settings.boot.kernel-parameters`` (see
  :mod:`.bottlerocket`) and is fixed when the manifest is written, so it needs ``backlog_limit`` or the
  ``instance_types`` the node pool may launch (the smallest memory among them sets it, as the aspect does
  for a mixed-instances group).

The shell families run the block in ``auto`` mode unless ``backlog_limit`` is given: the limit is computed
at boot from MemTotal with ``policy``, so each node gets its own type's limit.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import bottlerocket, instance_memory
from .policy import BacklogPolicy
from .tuning_options import TuningOptions
from .block_fit import fit_block
from .splice import Unsupported, literal_text
from .user_data import BlockInputs

__all__ = ["AMI_FAMILIES", "karpenter_user_data"]

#: The Karpenter ``amiFamily`` values this module writes user data for (Karpenter's own spelling).
AMI_FAMILIES = ("AL2023", "AL2", "Bottlerocket")


def karpenter_user_data(
    ami_family: str,
    *,
    policy: Optional[BacklogPolicy] = None,
    backlog_limit: Optional[int] = None,
    instance_types: Optional[Sequence[str]] = None,
    backlog_wait_time: Optional[int] = None,
    install_auditd: bool = False,
    allow_lower: bool = False,
    user_data: Optional[str] = None,
    compact_block: Optional[bool] = None,
    monitor_interval: Optional[int] = None,
) -> str:
    """The ``spec.userData`` text of an EC2NodeClass whose nodes size their audit backlog.

    :param ami_family: the node class's AMI family: ``"AL2023"``, ``"AL2"`` or ``"Bottlerocket"``.
    :param policy: how the limit follows memory. Default: ``BacklogPolicy()``.
    :param backlog_limit: a fixed limit, 1..2147483647. Default: None (AL2023/AL2: computed at boot
        from MemTotal; Bottlerocket: from ``instance_types``).
    :param instance_types: the instance types the node pool may launch; used by Bottlerocket only, whose
        limit must be fixed in the TOML (the smallest memory among them, with ``policy``). Default: None.
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000 (AL2023/AL2). Default:
        None (left as the image has it).
    :param install_auditd: install auditd where the image lacks it (AL2023/AL2). Default: False.
    :param allow_lower: lower a larger limit the image (or, for Bottlerocket, ``user_data``) already
        has. Default: False.
    :param user_data: your own user data to keep, merged with ours: MIME, a shell script or
        cloud-config (AL2023/AL2: ours becomes the first part, a shell script or cloud-config a part of its
        own after ours, its bytes and order kept), TOML (Bottlerocket). Default: None.
    :param compact_block: the block's form (AL2023/AL2): ``None`` plain, or compact (the body
        gzip-compressed and Base64-encoded, its ``CAB_*`` lines plain) where the returned text would exceed
        EC2's 16,384 bytes; ``True`` always compact (Karpenter adds its own part to what this returns: pass
        True when you are close to the limit); ``False`` always plain. Default: None.
    :param monitor_interval: seconds between two samples of the audit status published to the CloudWatch
        agent's StatsD listener, 10..3600 (AL2023/AL2): the block also installs the sampler's systemd timer
        (about 4 KB more block). Default: None (no sampler).

    Every error names this function and the option at fault.
    """
    try:
        return _node_class_user_data(
            ami_family,
            TuningOptions(
                backlog_limit=backlog_limit,
                policy=policy,
                backlog_wait_time=backlog_wait_time,
                install_auditd=install_auditd,
                allow_lower=allow_lower,
                # Karpenter's nodes boot from this user data once: no boot unit, no kernel command line.
                boot_unit=False,
                compact_block=compact_block,
                monitor_interval=monitor_interval,
            ),
            instance_types,
            user_data,
        )
    except ValueError as e:
        raise ValueError(f"karpenter_user_data: {e}") from None


def _node_class_user_data(
    ami_family: str, tuning: TuningOptions, instance_types: Optional[Sequence[str]], user_data: Optional[str]
) -> str:
    if ami_family not in AMI_FAMILIES:
        raise ValueError(
            f"ami_family must be one of {', '.join(AMI_FAMILIES)} (Karpenter's spelling), got "
            f"{ami_family!r}; Windows nodes have no Linux audit subsystem, and Custom images take the AL2023 "
            "or AL2 shape"
        )
    if user_data is not None and not isinstance(user_data, str):
        raise ValueError(f"user_data must be the text of your own user data, got {user_data!r}")
    types = _instance_types(instance_types)

    if ami_family == "Bottlerocket":
        shell_only = (tuning.backlog_wait_time, tuning.install_auditd or None, tuning.monitor_interval)
        if any(v is not None for v in shell_only):
            raise ValueError(
                "backlog_wait_time, install_auditd and monitor_interval do not apply to "
                "ami_family='Bottlerocket' (no auditd, no shell at boot; only the kernel parameter "
                "audit_backlog_limit is set)"
            )
        if user_data and user_data.strip() and not bottlerocket.is_bottlerocket_toml(user_data):
            raise ValueError("user_data for ami_family='Bottlerocket' must be TOML settings ([settings...])")
        limit = (
            tuning.backlog_limit if tuning.backlog_limit is not None else _smallest_type_limit(types, tuning)
        )
        try:
            return bottlerocket.merge_settings(user_data or "", limit, allow_lower=tuning.allow_lower).text
        except bottlerocket.NotToml as e:
            raise ValueError(f"user_data is not Bottlerocket TOML the merge can keep intact: {e}") from None

    inputs = BlockInputs.for_options(tuning, target=tuning.backlog_limit, source="karpenter")
    try:
        value = fit_block(
            None if user_data is None else {"Fn::Base64": user_data},
            inputs,
            compact_block=tuning.compact_block,
            require_mime=True,
            shell_as_part=True,
        ).user_data
    except Unsupported as e:
        raise ValueError(f"user_data cannot carry the block for ami_family={ami_family!r}: {e}") from None
    text = literal_text(value)
    assert text is not None  # no tokens go in: the result is literal text
    return text


def _instance_types(instance_types: Optional[Sequence[str]]) -> Optional[list]:
    if instance_types is None:
        return None
    if isinstance(instance_types, str) or not all(isinstance(t, str) for t in instance_types):
        raise ValueError(f"instance_types must be a list of instance type names, got {instance_types!r}")
    if not instance_types:
        raise ValueError("instance_types must name at least one instance type, got an empty list")
    unknown = [t for t in instance_types if instance_memory.memory_mib(t) is None]
    if unknown:
        raise ValueError(
            f"instance_types has types with no known memory: {', '.join(unknown)}; give backlog_limit instead"
        )
    return list(instance_types)


def _smallest_type_limit(types: Optional[list], tuning: TuningOptions) -> int:
    if not types:
        raise ValueError(
            "ami_family='Bottlerocket' needs backlog_limit or instance_types: Bottlerocket has no boot hook "
            "that could size the limit from MemTotal, so it is fixed in the TOML"
        )
    smallest = min(instance_memory.memory_mib(t) for t in types)  # type: ignore[type-var]
    assert tuning.policy is not None
    return tuning.policy.limit_for_memory(smallest)
