"""What this library remembers during one app's synthesis, kept on the app (the root construct).

Aspects can be invoked again while the tree grows, and several aspects (or ``apply_to`` calls) can reach the
same launch: each launch is decided once, each group's reach is checked once. That state belongs to the app
being synthesized, as aws-cdk keeps its own aspect bookkeeping on the construct tree: tests and tools that
build many apps in one process share nothing, and an app's state goes when the app goes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Set

from constructs import IConstruct

__all__ = ["AppRegistry"]

# A Python attribute on the root's proxy: jsii keeps one proxy per object created in Python (an App), so the
# attribute is found again through any construct's ``node.root``.
_ATTRIBUTE = "_cdk_audit_backlog_registry"


class AppRegistry:
    """The decided-once state of one app."""

    def __init__(self) -> None:
        #: jsii key of a launch L1 -> its tuning (claims, decision, what was written).
        self.tunings: Dict[str, Any] = {}
        #: jsii keys of the groups whose reach was checked (warned once, not at every visit).
        self.checked_groups: Set[str] = set()
        #: The plain aspect's per-stack index: stack key -> launch template logical id -> groups using it.
        self.groups_by_template: Dict[str, Dict[str, List[Any]]] = {}
        #: Whether ``AuditBacklog.skip`` was called anywhere in the app (until then no scope needs a look).
        self.skips_used = False

    @classmethod
    def of(cls, scope: IConstruct) -> "AppRegistry":
        root = scope.node.root
        registry = getattr(root, _ATTRIBUTE, None)
        if registry is None:
            registry = cls()
            setattr(root, _ATTRIBUTE, registry)
        return registry
