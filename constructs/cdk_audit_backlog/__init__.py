"""cdk-audit-backlog: size the Linux audit backlog (``auditctl -b``) of every EC2 launch in a CDK app."""

from .aspect import EC2_USER_DATA_LIMIT, METADATA_KEY, AuditBacklog
from .policy import BacklogPolicy

__all__ = ["AuditBacklog", "BacklogPolicy", "METADATA_KEY", "EC2_USER_DATA_LIMIT"]
