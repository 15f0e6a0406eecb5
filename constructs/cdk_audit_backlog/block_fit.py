"""Which form of the block a launch's user data gets, and the ways out when even that is too large.

EC2 accepts at most 16,384 bytes of user data (before Base64). The plain block is what the user data carries
wherever it fits; the compact block (the same script, its body gzip-compressed and Base64-encoded: see
:func:`.user_data.render_block`) where the plain one would not fit, or always or never as the user's
``compact_block`` says. Sizes are of the literal text: a lower bound where the user data holds tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Optional

from .splice import literal_bytes, splice_user_data
from .user_data import BlockInputs, render_block

__all__ = ["EC2_USER_DATA_LIMIT", "FittedUserData", "fit_block", "ways_out"]

#: EC2 refuses user data larger than 16 KB before Base64 encoding.
EC2_USER_DATA_LIMIT = 16384


@dataclass(frozen=True)
class FittedUserData:
    """The user data with the block in the form chosen.

    :param user_data: the resolved ``UserData`` value with the block.
    :param compact: whether the block is the compact form.
    :param size: bytes of its literal text (a lower bound when it holds tokens).
    """

    user_data: Any
    compact: bool
    size: int

    @property
    def fits(self) -> bool:
        return self.size <= EC2_USER_DATA_LIMIT


def fit_block(
    value: Any,
    inputs: BlockInputs,
    *,
    compact_block: Optional[bool],
    require_mime: bool = False,
    shell_as_part: bool = False,
) -> FittedUserData:
    """``value`` with the block for ``inputs``: plain unless ``compact_block`` is True, or None and the plain
    block would make the user data exceed :data:`EC2_USER_DATA_LIMIT`. Raises :class:`.splice.Unsupported`."""

    def splice(compact: bool) -> FittedUserData:
        spliced = splice_user_data(
            value,
            render_block(inputs, compact=compact),
            require_mime=require_mime,
            shell_as_part=shell_as_part,
        )
        return FittedUserData(spliced, compact, literal_bytes(spliced))

    if compact_block is not True:
        plain = splice(False)
        if compact_block is False or plain.fits:
            return plain
    return splice(True)


def ways_out(
    value: Any,
    inputs: BlockInputs,
    fitted: FittedUserData,
    *,
    compact_block: Optional[bool],
    require_mime: bool = False,
) -> List[str]:
    """Every way out of user data over the limit, each with the size it gives, for the aspect's error."""
    ways: List[str] = []
    if not fitted.compact:  # the user said compact_block=False
        compact = fit_block(value, inputs, compact_block=True, require_mime=require_mime)
        ways.append(f"the compact block (AuditBacklog(compact_block=None or True)): {compact.size} bytes")
    if inputs.boot_unit != "off":
        no_unit = replace(inputs, boot_unit="off")
        sizes = [fit_block(value, no_unit, compact_block=compact_block, require_mime=require_mime)]
        if compact_block is False:
            sizes.append(fit_block(value, no_unit, compact_block=True, require_mime=require_mime))
        shown = " or ".join(f"{f.size} bytes {'compact' if f.compact else 'plain'}" for f in sizes)
        ways.append(f"no boot unit (AuditBacklog(boot_unit=False)): {shown}")
    ways.append(
        f"leave this launch untuned with AuditBacklog.skip(scope, reason): {literal_bytes(value)} bytes "
        f"(the user data without the block)"
    )
    ways.append(f"shorten the user data by at least {fitted.size - EC2_USER_DATA_LIMIT} bytes")
    return ways
