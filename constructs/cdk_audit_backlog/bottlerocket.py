"""Bottlerocket: the backlog limit as a kernel parameter in the user's TOML settings.

Bottlerocket runs no auditd and no user-data scripts, so the boot block cannot run there. What it has is
``settings.boot.kernel-parameters`` (applied to the kernel command line by Bottlerocket itself) and
``settings.boot.reboot-to-reconcile = true``, which reboots once during the first boot when user data
changed the boot settings, so the kernel starts with ``audit_backlog_limit=N`` before any workload runs.

The merge works on the text, never through a TOML library's round trip (which would drop comments and
reorder tables): a small scanner finds where each statement and table header starts and ends, and the two
settings are either replaced in place (their value only) or inserted as one new line. Every user line is
kept, in order. Where Python has ``tomllib`` (3.11+) the result is parsed and must equal the user's
settings plus exactly our two keys, or the merge is refused.

The limit is fixed at synth time: Bottlerocket has no hook that runs before the kernel starts and could
size it from MemTotal. So ``auto`` (instance type unknown) is refused here; the aspect skips such a
launch with a warning naming ``backlog_limit``, and :func:`cdk_audit_backlog.karpenter.karpenter_user_data`
takes the smallest instance type a node pool may launch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .policy import validate_backlog_limit

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # pragma: no cover - older Pythons: tomli if present, else no re-parse check
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

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LIMIT_VALUE = re.compile(r"""\[\s*(?:"(\d{1,10})"|'(\d{1,10})')\s*,?\s*\]""")


class NotToml(ValueError):
    """The text is not TOML the scanner can read; ``str(e)`` says where."""


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


@dataclass(frozen=True)
class _Statement:
    kind: str  # "header", "array-header" or "kv"
    path: Tuple[str, ...]  # the full key path (for kv: the section's path + the dotted key)
    start: int  # offset of the statement's first character
    line_end: int  # offset just after its line's newline (or len(text))
    value: Optional[Tuple[int, int]] = None  # kv only: the value's span
    in_array_table: bool = False  # kv inside a [[...]] section: its path is not a plain table path


# -- scanning ---------------------------------------------------------------------------------------


class _Scanner:
    """Statement boundaries of a TOML document (TOML 1.0 syntax; values are skipped, not interpreted)."""

    def __init__(self, text: str) -> None:
        self.t = text
        self.n = len(text)

    def fail(self, i: int, what: str) -> NotToml:
        line = self.t.count("\n", 0, i) + 1
        return NotToml(f"line {line}: {what}")

    def ws(self, i: int) -> int:
        while i < self.n and self.t[i] in " \t":
            i += 1
        return i

    def blank(self, i: int) -> int:
        """Skips whitespace, newlines and comments."""
        while i < self.n:
            c = self.t[i]
            if c in " \t\r\n":
                i += 1
            elif c == "#":
                i = self.comment_end(i)
            else:
                break
        return i

    def comment_end(self, i: int) -> int:
        end = self.t.find("\n", i)
        return self.n if end < 0 else end

    def line_end(self, i: int) -> int:
        i = self.ws(i)
        if i < self.n and self.t[i] == "#":
            i = self.comment_end(i)
        if i >= self.n:
            return self.n
        if self.t.startswith("\r\n", i):
            return i + 2
        if self.t[i] == "\n":
            return i + 1
        raise self.fail(i, f"unexpected {self.t[i]!r} after a statement")

    def string_end(self, i: int) -> int:
        t = self.t
        for quote in ('"""', "'''"):
            if t.startswith(quote, i):
                j = i + 3
                while True:
                    k = t.find(quote, j)
                    if k < 0:
                        raise self.fail(i, "unterminated multi-line string")
                    if quote == '"""' and _escaped(t, k):
                        j = k + 1
                        continue
                    k += 3
                    extra = 0  # up to two more quotes belong to the content
                    while extra < 2 and k < self.n and t[k] == quote[0]:
                        k, extra = k + 1, extra + 1
                    return k
        quote = t[i]
        j = i + 1
        while j < self.n:
            c = t[j]
            if c == "\n":
                break
            if c == "\\" and quote == '"':
                j += 2
                continue
            if c == quote:
                return j + 1
            j += 1
        raise self.fail(i, "unterminated string")

    def value_end(self, i: int) -> int:
        t = self.t
        if i >= self.n:
            raise self.fail(i, "missing value")
        c = t[i]
        if c in "\"'":
            return self.string_end(i)
        if c in "[{":
            depth = 0
            while i < self.n:
                c = t[i]
                if c in "\"'":
                    i = self.string_end(i)
                    continue
                if c == "#":
                    i = self.comment_end(i)
                    continue
                if c in "[{":
                    depth += 1
                elif c in "]}":
                    depth -= 1
                    if depth == 0:
                        return i + 1
                i += 1
            raise self.fail(i, "unterminated array or inline table")
        j = i
        while j < self.n and t[j] not in "#\r\n":
            j += 1
        j_end = j
        while j_end > i and t[j_end - 1] in " \t":
            j_end -= 1
        if j_end == i:
            raise self.fail(i, "missing value")
        return j_end

    def key(self, i: int) -> Tuple[List[str], int]:
        parts: List[str] = []
        while True:
            i = self.ws(i)
            if i < self.n and self.t[i] in "\"'":
                if self.t.startswith(self.t[i] * 3, i):
                    raise self.fail(i, "multi-line string as a key")
                end = self.string_end(i)
                raw = self.t[i + 1 : end - 1]
                parts.append(_unescape(raw) if self.t[i] == '"' else raw)
                i = end
            else:
                m = _BARE_KEY.match(self.t, i)
                if not m:
                    raise self.fail(i, "expected a key")
                parts.append(m.group())
                i = m.end()
            i = self.ws(i)
            if i < self.n and self.t[i] == ".":
                i += 1
                continue
            return parts, i

    def inline_items(self, i: int) -> List[Tuple[List[str], int, int]]:
        """(dotted key, value start, value end) of each item of the inline table starting at ``i``."""
        items = []
        i = self.ws(i + 1)
        while i < self.n and self.t[i] != "}":
            key, i = self.key(i)
            if i >= self.n or self.t[i] != "=":
                raise self.fail(i, "expected '=' in an inline table")
            start = self.ws(i + 1)
            end = self.value_end(start)
            items.append((key, start, end))
            i = self.ws(end)
            if i < self.n and self.t[i] == ",":
                i = self.ws(i + 1)
        return items

    def statements(self) -> List[_Statement]:
        out: List[_Statement] = []
        section: Tuple[str, ...] = ()
        in_array_table = False
        i = self.blank(0)
        while i < self.n:
            start = i
            if self.t[i] == "[":
                array = self.t.startswith("[[", i)
                key, i = self.key(i + (2 if array else 1))
                close = "]]" if array else "]"
                if not self.t.startswith(close, i):
                    raise self.fail(i, f"expected {close!r}")
                section, in_array_table = tuple(key), array
                end = self.line_end(i + len(close))
                out.append(_Statement("array-header" if array else "header", section, start, end))
            else:
                key, i = self.key(i)
                if i >= self.n or self.t[i] != "=":
                    raise self.fail(i, "expected '='")
                value_start = self.ws(i + 1)
                value_end = self.value_end(value_start)
                end = self.line_end(value_end)
                out.append(
                    _Statement("kv", section + tuple(key), start, end, (value_start, value_end), in_array_table)
                )
            i = self.blank(end)
        return out


def _escaped(text: str, at: int) -> bool:
    """Whether the character at ``at`` is escaped by an odd number of backslashes."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


def _unescape(raw: str) -> str:
    def one(m: "re.Match[str]") -> str:
        s = m.group(1)
        if s[0] in "uU":
            return chr(int(s[1:], 16))
        return _ESCAPES[s]

    return re.sub(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[btnfre\"\\])", one, raw)


# -- merging ----------------------------------------------------------------------------------------


def _key_text(path: Tuple[str, ...]) -> str:
    # Kernel parameter names may hold dots (module.param), so Bottlerocket's documentation quotes them:
    # ours is quoted the same way; other segments are bare where TOML allows.
    out = []
    for part in path:
        bare = _BARE_KEY.fullmatch(part) and part != KERNEL_PARAMETER
        out.append(part if bare else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ".".join(out)


def _parse(text: str) -> Optional[Dict[str, Any]]:
    if _toml is None:
        return None
    try:
        return _toml.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, or tomli's
        raise NotToml(str(e)) from None


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


def _candidates(text: str, statements: List[_Statement], path: Tuple[str, ...], value: str) -> List[str]:
    """Texts that set ``path`` to ``value``, most local edit first (the caller keeps the first valid one)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    out: List[str] = []

    def insert(at: int, line: str) -> str:
        head = text[:at]
        if head and not head.endswith("\n"):
            head += nl
        return head + line + nl + text[at:]

    for s in statements:
        if s.kind == "array-header" and path[: len(s.path)] == s.path:
            return []  # an array of tables on our path: nothing we can add to safely
        if s.kind != "kv" or s.in_array_table or s.value is None:
            continue
        if s.path == path:  # replace the value only: key spelling, spacing and comment stay
            a, b = s.value
            return [text[:a] + value + text[b:]]
        if path[: len(s.path)] == s.path:  # a prefix of our path holds a value
            a, b = s.value
            if text[a] != "{":
                return []  # e.g. boot = "x": our key cannot exist there
            return [_set_inline(text, a, b, path[len(s.path) :], value)]
    headers = [s for s in statements if s.kind == "header" and path[: len(s.path)] == s.path and s.path != path]
    if headers:
        deepest = max(headers, key=lambda s: len(s.path))
        out.append(insert(deepest.line_end, _key_text(path[len(deepest.path) :]) + " = " + value))
    table = _key_text(path[:-1])
    tail = text if not text or text.endswith("\n") else text + nl
    out.append(tail + (nl if tail.strip() else "") + "[" + table + "]" + nl + _key_text(path[-1:]) + " = " + value + nl)
    first_header = next((s.start for s in statements if s.kind != "kv"), None)
    root_line = _key_text(path) + " = " + value
    out.append(insert(first_header, root_line) if first_header is not None else insert(len(text), root_line))
    return out


def _set_inline(text: str, a: int, b: int, rest: Tuple[str, ...], value: str) -> str:
    """``text`` with ``rest`` set to ``value`` inside the inline table at ``a``..``b``: the item's value
    replaced when it is there (also in a nested inline table), else a new first item."""
    for key, start, end in _Scanner(text).inline_items(a):
        key_path = tuple(key)
        if key_path == rest:
            return text[:start] + value + text[end:]
        if rest[: len(key_path)] == key_path and text[start] == "{":
            return _set_inline(text, start, end, rest[len(key_path) :], value)
    item = _key_text(rest) + " = " + value
    empty = not text[a + 1 : b - 1].strip()
    return text[: a + 1] + " " + item + (" " if empty else ",") + text[a + 1 :]


def _set(text: str, path: Tuple[str, ...], value_text: str, value: Any) -> str:
    doc = _parse(text)
    expected = _with(doc, path, value) if doc is not None else None
    for candidate in _candidates(text, _Scanner(text).statements(), path, value_text):
        if expected is None:
            return candidate  # no TOML parser on this Python: the scanner's first choice
        try:
            if _parse(candidate) == expected:
                return candidate
        except NotToml:
            continue
    raise NotToml(f"cannot set {_key_text(path)} without rewriting the user's settings")


def _lookup(doc: Optional[Dict[str, Any]], text: str, path: Tuple[str, ...]) -> Any:
    """The user's value at ``path``: from the parsed document, or (no parser) the scanner's text."""
    if doc is not None:
        node: Any = doc
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node
    for s in _Scanner(text).statements():
        if s.kind == "kv" and s.path == path and s.value is not None:
            raw = text[s.value[0] : s.value[1]]
            if raw in ("true", "false"):
                return raw == "true"
            m = _LIMIT_VALUE.fullmatch(raw)
            return [m.group(1) or m.group(2)] if m else raw
    return None


def merge_settings(text: str, limit: int, *, allow_lower: bool = False) -> BottlerocketMerge:
    """The user's Bottlerocket TOML with ``audit_backlog_limit`` and ``reboot-to-reconcile`` set.

    :param text: the user's settings (TOML), kept line for line.
    :param limit: the backlog limit, 1..2147483647.
    :param allow_lower: replace a larger ``audit_backlog_limit`` the user already set. Default: False
        (the user's larger value is kept, as the boot block never lowers a larger limit).

    A ``reboot-to-reconcile = false`` the user wrote is kept (a reboot is the user's choice): the
    parameter then takes effect from the node's next reboot, and ``notes`` says so.
    Raises :class:`NotToml` (a ``ValueError``) when the text is not TOML or our keys cannot be added
    without rewriting the user's own (e.g. ``boot`` set to a string).
    """
    validate_backlog_limit(limit, "limit")
    if not isinstance(allow_lower, bool):
        raise ValueError(f"allow_lower must be True or False, got {allow_lower!r}")
    _Scanner(text).statements()  # fails early, with a line number, on text the scanner cannot read
    doc = _parse(text)
    notes: List[str] = []
    existing = _lookup(doc, text, LIMIT_PATH)
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
    if _lookup(doc, text, RECONCILE_PATH) is False:
        notes.append(
            "kept reboot-to-reconcile = false: the kernel parameter takes effect at the node's next reboot"
        )
    else:
        merged = _set(merged, RECONCILE_PATH, "true", True)
    merged = _set(merged, LIMIT_PATH, f'["{limit}"]', [str(limit)])
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
        statements = _Scanner(stripped).statements()
        doc = _parse(stripped)
    except NotToml:
        return False
    if doc is not None:
        return bool(doc) and set(doc) == {"settings"}
    return bool(statements) and all(s.path[:1] == ("settings",) for s in statements)


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
    """A resolved ``UserData`` value of Bottlerocket TOML with our settings merged (see :func:`merge_settings`);
    the result has the same shape (``Fn::Base64`` of text or ``Fn::Join``, or literal Base64)."""
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
