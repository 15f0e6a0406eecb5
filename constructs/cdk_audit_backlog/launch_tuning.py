"""One launch's tuning, decided once: who claimed it, what was decided, and how it is written to the L1.

Two ways to write (see :mod:`.aspect`): ``apply_to``'s hook writes the decided values as plain overrides
(:meth:`Tuning.write`); the plain aspect attaches lazy values that decide when synthesis first resolves them
(:meth:`Tuning.attach_lazily`). Either way the decision is :func:`.launch_decision.decide`, made once per
launch and kept in the app's :class:`.registry.AppRegistry`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, List, Optional, Tuple

import jsii
from aws_cdk import Annotations, Aspects, CfnResource, IResolvable, IResolveContext, Stack, Token
from constructs import IConstruct, IValidation

from .block_fit import EC2_USER_DATA_LIMIT
from .launch_decision import AspectSettings, LaunchDecision, decide
from .launch_reader import (
    USER_DATA_PATH,
    Launch,
    groups_by_launch_template,
    key,
    read_stack,
    skip_marker_reason,
)
from .registry import AppRegistry
from .splice import literal_bytes

__all__ = ["Tuning", "METADATA_KEY", "EC2_USER_DATA_LIMIT"]

#: CloudFormation Metadata key on every launch the aspect saw. (The reader side, which checks synthesized
#: templates, keeps its own copy on purpose.)
METADATA_KEY = "cdk-audit-backlog"


def _distance_to_aspect(node: IConstruct, aspect: AspectSettings) -> int:
    """Depth of the nearest scope (the node itself or an ancestor) that carries ``aspect``; deeper is
    nearer."""
    scopes = node.node.scopes  # root first
    for depth in range(len(scopes) - 1, -1, -1):
        if any(a is aspect for a in Aspects.of(scopes[depth]).all):
            return depth
    return -1  # invoked through a path we cannot see (e.g. a Stage's inherited list): farthest


class Tuning:
    """What was decided for one launch L1: the claims of the aspects that reached it and the decision.

    Kept in the app's registry keyed by the L1's jsii reference, not as a hidden construct (one construct per
    launch cost several bridge calls and showed in every tree)."""

    @classmethod
    def of(cls, resource: CfnResource, kind: str, registry: AppRegistry) -> "Tuning":
        resource_key = key(resource)
        existing = registry.tunings.get(resource_key)
        if existing is None:
            existing = registry.tunings[resource_key] = cls(resource, kind, registry)
        return existing

    def __init__(self, resource: CfnResource, kind: str, registry: AppRegistry) -> None:
        self.resource = resource
        self.kind = kind
        self.registry = registry
        self.claims: List[Tuple[AspectSettings, Optional[int]]] = []  # (aspect, depth of apply_to's scope)
        self._decision: Optional[LaunchDecision] = None
        self.launch: Optional[Launch] = None  # what the decision was made from
        self._lazy = False
        self._validated = False

    @property
    def decided(self) -> bool:
        return self._decision is not None

    def claim(self, aspect: AspectSettings, depth: Optional[int] = None) -> None:
        if not any(a is aspect for a, _ in self.claims):
            self.claims.append((aspect, depth))

    @property
    def winner(self) -> AspectSettings:
        if len(self.claims) == 1:
            return self.claims[0][0]
        # Nearest scope wins; between aspects on the same scope, the one added (and so visiting) last. An
        # apply_to claim is made after the plain aspects' visits but stands for an aspect that, added to its
        # scope with a mutating priority, would have visited first: it ranks before them on the same scope.
        ranked = [
            (
                _distance_to_aspect(self.resource, a) if depth is None else depth,
                -1 if depth is not None else i,
                a,
            )
            for i, (a, depth) in enumerate(self.claims)
        ]
        return max(ranked, key=lambda c: (c[0], c[1]))[2]

    def attach_lazily(self) -> None:
        """The plain path: lazy UserData and Metadata, decided when synthesis first resolves them."""
        if self._lazy or self.decided:
            return
        self._lazy = True
        self.resource.add_property_override(USER_DATA_PATH[self.kind], _Producer(self, "user_data"))
        self.resource.add_metadata(METADATA_KEY, _Producer(self, "metadata"))
        self._add_validation()

    def decision(self) -> LaunchDecision:
        if self._decision is None:
            self.settle(self._read_alone())
        assert self._decision is not None
        return self._decision

    def settle(self, launch: Launch) -> LaunchDecision:
        """Decides from ``launch`` with the winning claim, once."""
        if self._decision is None:
            self.launch = launch
            self._decision = decide(launch, self.winner)
            for warning in self._decision.warnings:
                Annotations.of(self.resource).add_warning_v2(*warning)
        return self._decision

    def write(self) -> None:
        """apply_to's path: the decided values as plain overrides (no callback at synthesis); a skipped launch
        (or a running instance kept as is) keeps its own UserData property untouched."""
        decision = self.decision()
        if not decision.keeps_user_data:
            self.resource.add_property_override(USER_DATA_PATH[self.kind], decision.user_data)
        self.resource.add_metadata(METADATA_KEY, decision.metadata)
        if literal_bytes(decision.user_data) > EC2_USER_DATA_LIMIT:
            self._add_validation()

    def redo(self, fresh: Launch) -> None:
        """The same decision on user data read again after prepareApp (see the hook's recheck), written
        again."""
        assert self.launch is not None
        self.launch = replace(self.launch, data=fresh.data)
        self._decision = decide(self.launch, self.winner)
        self.write()

    def _read_alone(self) -> Launch:
        """The plain path: this launch read on its own, when its lazy values are first resolved."""
        stack = Stack.of(self.resource)
        (launch,), _ = read_stack(stack, [(self.resource, self.kind)], [])
        if self.kind == "AWS::EC2::LaunchTemplate":
            index = self.registry.groups_by_template
            stack_key = key(stack)
            if stack_key not in index:  # built once per stack, when the tree is final
                index[stack_key] = groups_by_launch_template(stack)
            launch.consumers = index[stack_key].get(launch.logical_id or "", [])
        launch.skipped = skip_marker_reason(self.resource, self.registry)
        return launch

    def _add_validation(self) -> None:
        if not self._validated:
            self._validated = True
            self.resource.node.add_validation(_SizeValidation(self))


@jsii.implements(IValidation)
class _SizeValidation:
    """User data over EC2's limit with the block fails synthesis, on that resource only."""

    def __init__(self, tuning: Tuning) -> None:
        self._tuning = tuning

    def validate(self) -> List[str]:
        decision = self._tuning.decision()
        size = literal_bytes(decision.user_data)
        if size > EC2_USER_DATA_LIMIT:
            ways = "; ".join(decision.ways_out) or "shorten the user data or use AuditBacklog.skip()"
            return [
                f"cdk-audit-backlog: the user data of {self._tuning.resource.node.path} is {size} bytes with "
                "the audit backlog block (at least, not counting tokens); EC2 accepts at most "
                f"{EC2_USER_DATA_LIMIT} bytes. Ways out: {ways}."
            ]
        return []


@jsii.implements(IResolvable)
class _Producer:
    """Lazy value of the overridden UserData or of the Metadata (plain path), both from the one decision.

    An ``IResolvable`` of our own rather than ``Lazy.any``: CDK resolves it only at synthesis, every time
    with a context, and the decision it reads is made once.
    """

    def __init__(self, tuning: Tuning, field: str) -> None:
        self._tuning = tuning
        self._field = field

    @property
    def creation_stack(self) -> List[str]:
        return []

    def resolve(self, context: IResolveContext) -> Any:
        return getattr(self._tuning.decision(), self._field)

    def to_string(self) -> str:
        return Token.as_string(self)
