"""cdk-audit-backlog: size the Linux audit backlog (``auditctl -b``) of every EC2 launch in a CDK app."""

from typing import TYPE_CHECKING, Any

from .policy import BacklogPolicy

if TYPE_CHECKING:
    from .aspect import EC2_USER_DATA_LIMIT, METADATA_KEY, AuditBacklog

__all__ = ["AuditBacklog", "BacklogPolicy", "METADATA_KEY", "EC2_USER_DATA_LIMIT"]

_FROM_ASPECT = ("AuditBacklog", "METADATA_KEY", "EC2_USER_DATA_LIMIT")


def __getattr__(name: str) -> Any:
    # aspect.py imports aws_cdk, which starts a Node process (about 1 s): load it on first use, so the
    # operator CLI (`cdk-audit-backlog plan`, `report`) starts without it.
    if name in _FROM_ASPECT:
        from . import aspect

        return getattr(aspect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
