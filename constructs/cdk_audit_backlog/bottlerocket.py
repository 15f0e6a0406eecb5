"""Bottlerocket: the backlog limit as a kernel parameter in the user's TOML settings.

Bottlerocket runs no auditd and no user-data scripts, so the boot block cannot run there. What it has is
``settings.boot.kernel-parameters`` (applied to the kernel command line by Bottlerocket itself) and
``settings.boot.reboot-to-reconcile = true``, which reboots once during the first boot when user data
changed the boot settings, so the kernel starts with ``audit_backlog_limit=N`` before any workload runs.

The merge edits the user's document with ``tomlkit``, which keeps comments, spacing, key spelling and table
order: a value of ours already there is replaced in place (its value only), otherwise the key goes in as one
new line (or inline-table item) at the top of the deepest table on its path, or as a new table at the end.
Every user line is kept, in order, with the file's newline style. The result is parsed again (``tomllib``
on 3.11+, else tomlkit's own reading) and must equal the user's settings plus exactly our two keys, or the
merge is refused.

The limit is fixed at synth time: Bottlerocket has no hook that runs before the kernel starts and could
size it from MemTotal. So ``auto`` (instance type unknown) is refused here; the aspect skips such a
launch with a warning naming ``backlog_limit``, and :func:`cdk_audit_backlog.karpenter.karpenter_user_data`
takes the smallest instance type a node pool may launch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Callable, Dict, List, Optional, Tuple

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, DottedKey, InlineTable, Key, KeyType, SingleKey, Table

from .policy import validate_backlog_limit

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # pragma: no cover - older Pythons: tomli if present, else tomlkit's own reading
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ImportError:
        _toml = None  # type: ignore[assignment]

__all__ = [
    "KERNEL_PARAMETER",
    "NotToml",
    "LIMIT_PATH",
    "RECONCILE_PATH",
    "BottlerocketMerge",
    "is_bottlerocket_toml",
    "is_bottlerocket_user_data",
    "merge_user_data",
    "merge_settings",
    "settings_toml",
]

KERNEL_PARAMETER = "audit_backlog_limit"
#: ``settings.boot.kernel-parameters."audit_backlog_limit"``: a list of strings, like every kernel parameter.
LIMIT_PATH = ("settings", "boot", "kernel-parameters", KERNEL_PARAMETER)
#: ``settings.boot.reboot-to-reconcile``: reboot once at first boot so the parameter is in force.
RECONCILE_PATH = ("settings", "boot", "reboot-to-reconcile")


class NotToml(ValueError):
    """The text is not TOML, or our keys cannot be added without rewriting the user's; ``str(e)`` says
    where or which key."""


@dataclass(frozen=True)
class BottlerocketMerge:
    """The user's TOML with our settings, and what was kept of the user's own choices.

    :param text: the merged TOML.
    :param limit: the limit the kernel parameter now holds (the user's larger one if it was kept).
    :param notes: one sentence per user choice that was kept, e.g. ``reboot-to-reconcile = false``.
    """

    text: str
    limit: int
    notes: Tuple[str, ...] = ()


# -- reading ----------------------------------------------------------------------------------------


def _data(text: str) -> Dict[str, Any]:
    """What ``text`` reads as: plain data, by ``tomllib`` where there is one (else tomlkit's reading)."""
    try:
        return _toml.loads(text) if _toml is not None else tomlkit.parse(text).unwrap()
    except (ValueError, TOMLKitError) as e:  # tomllib.TOMLDecodeError is a ValueError
        raise NotToml(str(e)) from None


def _document(text: str) -> tomlkit.TOMLDocument:
    """``text`` as tomlkit's editable document (comments, spacing and order kept)."""
    try:
        return tomlkit.parse(text)
    except TOMLKitError as e:
        raise NotToml(str(e)) from None


def _lookup(data: Dict[str, Any], path: Tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _with(doc: Dict[str, Any], path: Tuple[str, ...], value: Any) -> Dict[str, Any]:
    """A copy of ``doc`` with ``path`` set to ``value`` (tables copied on the way down)."""
    out = dict(doc)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[path[-1]] = value
    return out


# -- editing ----------------------------------------------------------------------------------------


def _name(path: Tuple[str, ...]) -> str:
    return ".".join(path)


def _key(path: Tuple[str, ...]) -> Key:
    # Kernel parameter names may hold dots (module.param), so Bottlerocket's documentation quotes them:
    # ours is quoted the same way; other segments are bare where TOML allows (tomlkit decides).
    parts = [SingleKey(p, t=KeyType.Basic) if p == KERNEL_PARAMETER else SingleKey(p) for p in path]
    return parts[0] if len(parts) == 1 else DottedKey(parts)


def _headed(node: Any) -> Any:
    """The part of ``node`` that has its own ``[header]`` (or is an inline table), else None: a table
    only implied by a deeper header or by dotted keys has no line of its own to add a key under."""
    if isinstance(node, InlineTable) or (isinstance(node, Table) and not node.is_super_table()):
        return node
    if isinstance(node, OutOfOrderTableProxy):  # one table written as several [header] sections
        # The proxy's parts are not public API (hence tomlkit's pinned minor release in pyproject.toml).
        return next((t for t in node._tables if not t.is_super_table()), None)
    return None


def _walk(document: tomlkit.TOMLDocument, path: Tuple[str, ...]) -> Tuple[Any, int, Any, int]:
    """(the deepest table on ``path`` that exists, its depth, the deepest one with a header of its own or
    an inline table, its depth); refuses a path through an array of tables or through a value."""
    node: Any = document
    depth, anchor, anchor_depth = 0, None, 0
    for part in path[:-1]:
        if part not in node:
            break
        child = node[part]
        here = _name(path[: depth + 1])
        if isinstance(child, AoT):
            raise NotToml(f"{here} is an array of tables: {_name(path)} has no single place there")
        if not isinstance(child, dict):
            raise NotToml(f"{here} holds a value, not a table: {_name(path)} cannot be added")
        node, depth = child, depth + 1
        if _headed(child) is not None:
            anchor, anchor_depth = _headed(child), depth
    return node, depth, anchor, anchor_depth


def _replace(document: tomlkit.TOMLDocument, path: Tuple[str, ...], value: Any) -> Optional[str]:
    """Our key already there: its value replaced in place (key spelling, spacing and comment stay)."""
    node, depth, _, _ = _walk(document, path)
    if depth != len(path) - 1 or path[-1] not in node:
        return None
    node[path[-1]] = value
    return document.as_string()


def _staged(path: Tuple[str, ...], value: Any) -> Tuple[Key, Any]:
    """The (maybe dotted) key and item tomlkit makes of ``path = value``, to be placed by the caller."""
    staging = tomlkit.table()
    staging.add(_key(path), value)
    ((key, item),) = staging.value.body
    return key, item


def _insert_under_header(document: tomlkit.TOMLDocument, path: Tuple[str, ...], value: Any) -> Optional[str]:
    """A new first line under the deepest ``[header]`` on the path (or first item of an inline table)."""
    _, _, anchor, depth = _walk(document, path)
    if anchor is None:
        return None
    key, item = _staged(path[depth:], value)
    if isinstance(anchor, InlineTable):
        item.trivia.indent = " "
        if not anchor.value.body:
            item.trivia.trail = " "
    body = anchor.value
    # tomlkit's public add() appends at the end of the table; a line right under the header is where
    # a reader looks (and where earlier releases put it, so deployed user data keeps its bytes): the item
    # goes in at the first position with the container's _insert_at (hence the pinned minor release).
    if body.body:
        body._insert_at(0, key, item)
    else:
        body.append(key, item)
    return document.as_string()


def _new_table_at_end(document: tomlkit.TOMLDocument, path: Tuple[str, ...], value: Any) -> Optional[str]:
    """A new ``[table]`` holding the key, after everything else (a blank line before it)."""
    node: Any = tomlkit.table()
    node.add(_key(path[-1:]), value)
    for part in reversed(path[1:-1]):
        outer = tomlkit.table(is_super_table=True)
        outer.add(part, node)
        node = outer
    addition = tomlkit.document()
    addition.add(path[0], node)
    text = document.as_string()
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text.strip() else "") + addition.as_string()


def _dotted_at_root(document: tomlkit.TOMLDocument, path: Tuple[str, ...], value: Any) -> Optional[str]:
    """A dotted key at the root, on the line right before the first ``[header]``, or after the last line
    when there is none (as earlier releases put it; tomlkit's add() would put it after the last root key,
    before the blank lines)."""
    first_table = next(
        (
            i
            for i, (k, v) in enumerate(document.body)
            if isinstance(v, (Table, AoT)) and k and not k.is_dotted()
        ),
        None,
    )
    if first_table is not None:
        document._insert_at(first_table, *_staged(path, value))
        return document.as_string()
    addition = tomlkit.document()
    addition.add(_key(path), value)
    text = document.as_string()
    return text + ("\n" if text and not text.endswith("\n") else "") + addition.as_string()


#: Where a key of ours can go, most local edit first: the first whose result reads as expected is kept.
_EDITS: Tuple[Callable[[tomlkit.TOMLDocument, Tuple[str, ...], Any], Optional[str]], ...] = (
    _replace,
    _insert_under_header,
    _new_table_at_end,
    _dotted_at_root,
)


def _lines(text: str) -> List[str]:
    return [line for line in re.split(r"(?<=\n)", text) if line]


def _newlines_like(original: str, edited: str) -> str:
    """``edited`` with the lines that are not the user's ending as the original's do (CRLF stays CRLF:
    tomlkit writes new lines with LF)."""
    if "\r\n" not in original:
        return edited
    before, after = _lines(original), _lines(edited)
    out: List[str] = []
    for tag, _, _, j1, j2 in SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        for line in after[j1:j2]:
            if tag != "equal" and line.endswith("\n") and not line.endswith("\r\n"):
                line = line[:-1] + "\r\n"
            out.append(line)
    return "".join(out)


def _set(text: str, data: Dict[str, Any], path: Tuple[str, ...], value: Any) -> Tuple[str, Dict[str, Any]]:
    """``text`` with ``path`` set to ``value``, and what it now reads as; refused unless that is exactly the
    user's settings with this one key set."""
    expected = _with(data, path, value)
    document = _document(text)
    for edit in _EDITS:
        try:
            candidate = edit(document, path, value)
        except NotToml:
            raise  # our path runs through an array of tables or a value: no edit can help
        except (TOMLKitError, ValueError):  # tomlkit would not make this edit (e.g. a key defined twice)
            candidate = ""
        if candidate is None:
            continue  # this edit has no place here and left the document as it was
        if candidate:
            candidate = _newlines_like(text, candidate)
            try:
                if _data(candidate) == expected:
                    return candidate, expected
            except NotToml:
                pass
        document = _document(text)  # the edit changed the document: the next one starts afresh
    raise NotToml(f"cannot set {_name(path)} without rewriting the user's settings")


def merge_settings(text: str, limit: int, *, allow_lower: bool = False) -> BottlerocketMerge:
    """The user's Bottlerocket TOML with ``audit_backlog_limit`` and ``reboot-to-reconcile`` set.

    :param text: the user's settings (TOML), kept line for line.
    :param limit: the backlog limit, 1..2147483647.
    :param allow_lower: replace a larger ``audit_backlog_limit`` the user already set. Default: False
        (the user's larger value is kept, as the boot block never lowers a larger limit).

    A ``reboot-to-reconcile = false`` the user wrote is kept (a reboot is the user's choice): the
    parameter then takes effect from the node's next reboot, and ``notes`` says so.
    Raises :class:`NotToml` (a ``ValueError``) when the text is not TOML or our keys cannot be added
    without rewriting the user's own (e.g. ``boot`` set to a string, or an array of tables on the path).
    """
    validate_backlog_limit(limit, "limit")
    if not isinstance(allow_lower, bool):
        raise ValueError(f"allow_lower must be True or False, got {allow_lower!r}")
    data = _data(text)
    notes: List[str] = []
    existing = _lookup(data, LIMIT_PATH)
    if (
        isinstance(existing, list)
        and len(existing) == 1
        and isinstance(existing[0], str)
        and existing[0].isdigit()
        and int(existing[0]) > limit
        and not allow_lower
    ):
        limit = int(existing[0])
        notes.append(f"kept the larger {KERNEL_PARAMETER} {limit} the settings already had")
    merged = text
    # reboot-to-reconcile first: in settings with no [settings.boot] yet, the limit then goes under the
    # table that line created rather than into a second new table.
    if _lookup(data, RECONCILE_PATH) is False:
        notes.append(
            "kept reboot-to-reconcile = false: the kernel parameter takes effect at the node's next reboot"
        )
    else:
        merged, data = _set(merged, data, RECONCILE_PATH, True)
    merged, data = _set(merged, data, LIMIT_PATH, [str(limit)])
    return BottlerocketMerge(merged, limit, tuple(notes))


def is_bottlerocket_toml(text: str) -> bool:
    """Whether ``text`` reads as Bottlerocket user data: TOML whose only top-level table is ``settings``.

    Shell scripts, cloud-config, MIME and empty user data are not (a ``#!`` line alone is a TOML comment,
    hence the non-empty ``settings`` requirement).
    """
    stripped = text.lstrip("\ufeff")
    if stripped.startswith("#!") or stripped.lower().startswith("#cloud-config"):
        return False
    try:
        data = _data(stripped)
    except NotToml:
        return False
    return bool(data) and set(data) == {"settings"}


def settings_toml(limit: int) -> str:
    """Bottlerocket user data holding only our two settings (for a node class or launch with none)."""
    return merge_settings("", limit).text


# -- CloudFormation values (what the aspect sees) ----------------------------------------------------

_PLACEHOLDER = "cabtoken{}x"


def _text_with_placeholders(value: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The decoded text of a resolved ``UserData`` value, each token replaced by a bare placeholder word
    (tokens sit inside TOML strings, e.g. ECS's cluster name), and the tokens by placeholder; None when
    the value is not ``Fn::Base64`` of text / literal Base64."""
    from .splice import _segments, literal_text

    if isinstance(value, str):
        text = literal_text(value)
        return (text, {}) if text is not None else None
    if not (isinstance(value, dict) and list(value) == ["Fn::Base64"]):
        return None
    segments = _segments(value["Fn::Base64"])
    literal = "".join(s for s in segments if isinstance(s, str))
    tokens: Dict[str, Any] = {}
    parts = []
    for s in segments:
        if isinstance(s, str):
            parts.append(s)
            continue
        n = len(tokens)
        while _PLACEHOLDER.format(n) in literal:
            n += 1
        tokens[_PLACEHOLDER.format(n)] = s
        parts.append(_PLACEHOLDER.format(n))
    return "".join(parts), tokens


def is_bottlerocket_user_data(value: Any) -> bool:
    """Whether a resolved ``UserData`` value is Bottlerocket TOML (tokens allowed inside values)."""
    found = _text_with_placeholders(value)
    return found is not None and is_bottlerocket_toml(found[0])


def merge_user_data(value: Any, limit: int, *, allow_lower: bool = False) -> Tuple[Any, BottlerocketMerge]:
    """A resolved ``UserData`` value of Bottlerocket TOML with our settings merged (see
    :func:`merge_settings`); the result has the same shape (``Fn::Base64`` of text or ``Fn::Join``, or literal
    Base64)."""
    import base64

    found = _text_with_placeholders(value)
    if found is None:
        raise NotToml("user data is not Fn::Base64 of text or literal Base64")
    text, tokens = found
    merge = merge_settings(text, limit, allow_lower=allow_lower)
    if isinstance(value, str):
        return base64.b64encode(merge.text.encode("utf-8")).decode("ascii"), merge
    if not tokens:
        return {"Fn::Base64": merge.text}, merge
    pieces: List[Any] = []
    for chunk in re.split("(" + "|".join(map(re.escape, tokens)) + ")", merge.text):
        if chunk in tokens:
            pieces.append(tokens[chunk])
        elif chunk:
            pieces.append(chunk)
    return {"Fn::Base64": {"Fn::Join": ["", pieces]}}, merge
