"""cdk-audit-backlog: size the Linux audit backlog (``auditctl -b``) of every EC2 launch in a CDK app."""

from typing import TYPE_CHECKING, Any

from .policy import BacklogPolicy
from .tuning_options import TuningOptions

if TYPE_CHECKING:
    from .aspect import EC2_USER_DATA_LIMIT, METADATA_KEY, AuditBacklog
    from .association import AssociationOptions, AssociationTarget, AuditBacklogAssociation
    from .check import AuditBacklogCheck
    from .monitoring import AuditBacklogMonitoring, MonitoringOptions

__all__ = [
    "AuditBacklog",
    "AuditBacklogAssociation",
    "AssociationOptions",
    "AssociationTarget",
    "AuditBacklogCheck",
    "AuditBacklogMonitoring",
    "BacklogPolicy",
    "MonitoringOptions",
    "TuningOptions",
    "METADATA_KEY",
    "EC2_USER_DATA_LIMIT",
]

_LAZY = {
    "AuditBacklog": "aspect",
    "METADATA_KEY": "aspect",
    "EC2_USER_DATA_LIMIT": "aspect",
    "AuditBacklogCheck": "check",
    "AuditBacklogAssociation": "association",
    "AssociationOptions": "association",
    "AssociationTarget": "association",
    "AuditBacklogMonitoring": "monitoring",
    "MonitoringOptions": "monitoring",
}


def __getattr__(name: str) -> Any:
    # aspect.py, association.py, check.py and monitoring.py import aws_cdk, which starts a Node process (about
    # 1 s): load them on first use, so the operator CLI (`cdk-audit-backlog plan`, `report`) starts without
    # it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
