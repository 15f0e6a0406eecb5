"""The ``cdk.context.json`` key that records which Instances of a stack already run (no CDK import, so the
CLI that writes it starts fast; :mod:`.running_instances` reads it at synthesis)."""

from typing import Any

CONTEXT_KEY_PREFIX = "cdk-audit-backlog:deployed-instances"
#: How the ``deployed`` value of the Metadata starts when the aspect kept a running Instance's user data.
USER_DATA_KEPT = "user data kept"
ASSOCIATION_TYPE = "AWS::SSM::Association"


def context_key(account: str, region: str, stack_name: str) -> str:
    """The key recording the deployed Instances (logical ids) of one stack in one account and region."""
    return f"{CONTEXT_KEY_PREFIX}:account={account}:region={region}:stack={stack_name}"


def user_data_kept(metadata: Any) -> bool:
    """Whether a launch's ``cdk-audit-backlog`` Metadata says its user data was kept because it already
    runs."""
    deployed = metadata.get("deployed") if isinstance(metadata, dict) else None
    return isinstance(deployed, str) and deployed.startswith(USER_DATA_KEPT)
