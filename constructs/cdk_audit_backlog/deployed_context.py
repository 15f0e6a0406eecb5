"""The ``cdk.context.json`` key that records which Instances of a stack already run (no CDK import, so the
CLI that writes it starts fast; :mod:`.running_instances` reads it at synthesis)."""

CONTEXT_KEY_PREFIX = "cdk-audit-backlog:deployed-instances"


def context_key(account: str, region: str, stack_name: str) -> str:
    """The key recording the deployed Instances (logical ids) of one stack in one account and region."""
    return f"{CONTEXT_KEY_PREFIX}:account={account}:region={region}:stack={stack_name}"
