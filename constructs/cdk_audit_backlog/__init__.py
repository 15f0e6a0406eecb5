"""cdk-audit-backlog: size the Linux audit backlog (``auditctl -b``) of every EC2 launch in a CDK app."""

from .policy import BacklogPolicy

__all__ = ["BacklogPolicy"]
