"""Puts the boot block into a resolved CloudFormation ``UserData`` value.

Input is what the stack resolves a launch's user data to: ``{"Fn::Base64": X}`` where X is a literal
string, an ``Fn::Join`` (CDK's rendering of text with tokens) or an ``Fn::Sub``; a literal Base64 string; or
nothing. Output is a new value of the same kind whose decoded text is the user's text with the block added,
the user's bytes untouched and in order:

- shell script (``#!`` naming a POSIX shell): the block right after the shebang line, so it runs even when
  the user's script exits early;
- MIME multipart: a ``text/x-shellscript`` part of its own, first, so cloud-init runs it before the user's
  parts (``part-001``) while EKS's own parts stay byte for byte;
- ``#cloud-config``: wrapped into a two-part MIME archive (our script, then the unchanged cloud-config), the
  format cloud-init documents for mixing the two;
- nothing: a new ``#!/bin/bash`` script holding only the block (or a one-part MIME archive where the
  consumer, such as an EKS managed node group, demands MIME).

Anything else (PowerShell, Bottlerocket TOML, other interpreters, tokens where the header should be) is
refused with :class:`Unsupported`, whose message says why; the aspect turns that into a warning.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, List, Optional, Union

from .user_data import BLOCK_BEGIN

__all__ = ["Unsupported", "splice_user_data", "MIME_BOUNDARY", "user_data_kind"]

Segment = Union[str, dict]

#: Boundary of the MIME archives we create; never present in user content we wrap (checked).
MIME_BOUNDARY = "==CDK-AUDIT-BACKLOG-BOUNDARY=="
_SHELLS = {"sh", "bash", "dash", "ksh", "zsh", "ash", "busybox"}
_BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";\r\n]+)"?', re.IGNORECASE)


class Unsupported(Exception):
    """The user data is of a kind the block cannot be added to safely; ``str(e)`` says why."""


def _segments(value: Any) -> List[Segment]:
    """Flattens a resolved string expression into literal strings and opaque intrinsics."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and len(value) == 1:
        if "Fn::Join" in value:
            delimiter, parts = value["Fn::Join"]
            if not isinstance(delimiter, str) or not isinstance(parts, list):
                return [value]
            out: List[Segment] = []
            for i, part in enumerate(parts):
                if i and delimiter:
                    out.append(delimiter)
                out.extend(_segments(part))
            return out
        if "Fn::Sub" in value:
            return _sub_segments(value["Fn::Sub"])
    return [value]


def _sub_segments(arg: Any) -> List[Segment]:
    """Splits an Fn::Sub so its first line (the header we must read) becomes a literal, when it holds no
    ``${``."""
    template, variables = (arg, None) if isinstance(arg, str) else (arg[0], arg[1] if len(arg) > 1 else None)
    if not isinstance(template, str):
        return [{"Fn::Sub": arg}]
    head, newline, rest = template.partition("\n")
    if not newline or "${" in head:
        return [{"Fn::Sub": arg}]
    rest_sub: Segment = {"Fn::Sub": rest if variables is None else [rest, variables]}
    return [head + newline, rest_sub]


def _merge(segments: List[Segment]) -> List[Segment]:
    out: List[Segment] = []
    for s in segments:
        if isinstance(s, str):
            if not s:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + s
                continue
        out.append(s)
    return out


def _leading_text(segments: List[Segment]) -> str:
    text = []
    for s in segments:
        if not isinstance(s, str):
            break
        text.append(s)
    return "".join(text)


def user_data_kind(head: str) -> str:
    """Names the kind of user data from its leading literal text: shell, mime, cloud-config, or a reason to
    skip."""
    stripped = head.lstrip("\ufeff")
    first_line = stripped.split("\n", 1)[0].rstrip("\r")
    lowered = stripped[:4096].lower()
    if first_line.startswith("#!"):
        words = first_line[2:].split()
        interpreter = words[0].rsplit("/", 1)[-1] if words else ""
        if interpreter == "env" and len(words) > 1:
            interpreter = words[1].rsplit("/", 1)[-1]
        if interpreter in _SHELLS:
            return "shell"
        raise Unsupported(
            f"user data is a script for {interpreter or 'an unnamed interpreter'!r}, not a POSIX shell"
        )
    if lowered.startswith(("content-type: multipart", "mime-version:")) or (
        lowered.startswith("content-type:") and "multipart/" in lowered.split("\n\n", 1)[0]
    ):
        return "mime"
    if first_line.startswith("#cloud-config"):
        return "cloud-config"
    if lowered.lstrip().startswith(
        ("<powershell>", "<script>", "<persist>", "version: 1.", "<runasLocalSystem>".lower())
    ):
        raise Unsupported(
            "user data is for Windows (PowerShell / EC2Launch), which has no Linux audit subsystem"
        )
    if re.match(r"\s*\[settings", stripped):
        raise Unsupported(
            "user data is Bottlerocket TOML settings (no auditd); AuditBacklog(bottlerocket=True) sets "
            "audit_backlog_limit in settings.boot.kernel-parameters instead"
        )
    if first_line.startswith("#"):
        raise Unsupported(
            f"user data of kind {first_line.split()[0]!r} is not supported (only shell, MIME, cloud-config)"
        )
    raise Unsupported(
        "user data has no '#!' shebang, MIME header or '#cloud-config' header: not a script cloud-init runs"
    )


def _shell_part(block: str, newline: str = "\n") -> str:
    # Headers follow the archive's line ending; the script body keeps "\n", which is what bash needs.
    headers = newline.join(
        [
            'Content-Type: text/x-shellscript; charset="us-ascii"',
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: 7bit",
            'Content-Disposition: attachment; filename="cdk-audit-backlog.sh"',
        ]
    )
    # The newline before the next "--boundary" belongs to the delimiter (RFC 2046), hence the extra one.
    return headers + newline + newline + "#!/bin/bash\n" + block + newline


def _new_mime(block: str, tail_parts: List[Segment]) -> List[Segment]:
    """A MIME archive: our shell part, then (optionally) one more part given as segments."""
    out: List[Segment] = [
        'Content-Type: multipart/mixed; boundary="' + MIME_BOUNDARY + '"\n'
        "MIME-Version: 1.0\n\n"
        "--" + MIME_BOUNDARY + "\n" + _shell_part(block)
    ]
    out.extend(tail_parts)
    out.append("--" + MIME_BOUNDARY + "--\n")
    return out


def _splice_segments(
    segments: List[Segment], block: str, require_mime: bool, shell_as_part: bool = False
) -> List[Segment]:
    head = _leading_text(segments)
    for s in segments:
        if isinstance(s, str) and BLOCK_BEGIN in s:
            raise Unsupported("user data already carries a cdk-audit-backlog block")
    if not segments or (len(segments) == 1 and segments[0] == ""):
        return _new_mime(block, []) if require_mime else ["#!/bin/bash\n" + block]
    kind = user_data_kind(head)
    if kind == "shell":
        if require_mime and shell_as_part:
            return _new_mime(block, _user_part(segments, "text/x-shellscript", "user-data.sh"))
        if require_mime:
            raise Unsupported(
                "this launch template's consumer (an EKS managed node group) needs MIME multipart user data"
            )
        line_end = head.find("\n")
        if line_end < 0:
            if len(segments) > 1:
                raise Unsupported("the shebang line of the user data contains a token")
            return [segments[0] + "\n" + block]
        return _insert_at(segments, line_end + 1, block)
    if kind == "mime":
        header_end = head.find("\n\n")
        match = _BOUNDARY_RE.search(head if header_end < 0 else head[:header_end])
        if not match:
            raise Unsupported("MIME user data without a readable boundary in its literal header")
        boundary = match.group(1).strip()
        newline = "\r\n" if "\r\n" in head else "\n"
        delimiter = "--" + boundary
        at = head.find(delimiter)
        while at > 0 and head[at - 1] != "\n":
            at = head.find(delimiter, at + 1)
        if at < 0:
            raise Unsupported("MIME user data whose first part delimiter is not literal text")
        part = delimiter + newline + _shell_part(block, newline)
        return _insert_at(segments, at, part)
    # cloud-config: keep the YAML as one unchanged part after ours.
    return _new_mime(block, _user_part(segments, "text/cloud-config", "cloud-config.txt"))


def _user_part(segments: List[Segment], content_type: str, filename: str) -> List[Segment]:
    """The user's whole text as one unchanged MIME part (to follow ours)."""
    if any(isinstance(s, str) and MIME_BOUNDARY in s for s in segments):
        raise Unsupported("user data contains our MIME boundary string")
    part: List[Segment] = [
        "--" + MIME_BOUNDARY + "\n"
        f'Content-Type: {content_type}; charset="us-ascii"\n'
        "MIME-Version: 1.0\n"
        "Content-Transfer-Encoding: 7bit\n"
        f'Content-Disposition: attachment; filename="{filename}"\n\n'
    ]
    part.extend(segments)
    part.append("\n")  # belongs to the closing delimiter: the part's payload is the user's text exactly
    return part


def _insert_at(segments: List[Segment], offset: int, text: str) -> List[Segment]:
    """Inserts ``text`` at character ``offset`` of the leading literal run of ``segments``."""
    out: List[Segment] = []
    remaining = offset
    inserted = False
    for s in segments:
        if not inserted and isinstance(s, str) and remaining <= len(s):
            out.extend([s[:remaining], text, s[remaining:]])
            inserted = True
            continue
        if not inserted and isinstance(s, str):
            remaining -= len(s)
        out.append(s)
    if not inserted:  # offset == len(leading text) with a token next
        out.append(text)
    return out


def splice_user_data(
    value: Any, block: str, *, require_mime: bool = False, shell_as_part: bool = False
) -> Any:
    """Returns ``value`` (a resolved ``UserData`` property) with ``block`` added; raises :class:`Unsupported`.

    :param require_mime: the consumer takes MIME multipart only (an EKS managed node group, Karpenter).
    :param shell_as_part: where MIME is required, a shell script becomes a part of its own after ours (what
        Karpenter merges); without it a shell script is refused there (EKS refuses it anyway)."""
    if value is None:
        segments: List[Segment] = []
        wrap = "base64-fn"
    elif isinstance(value, dict) and list(value) == ["Fn::Base64"]:
        segments = _segments(value["Fn::Base64"])
        wrap = "base64-fn"
    elif isinstance(value, str):
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Unsupported("user data is a literal string that is not Base64 of UTF-8 text") from None
        segments = [text]
        wrap = "base64-literal"
    else:
        raise Unsupported(
            "user data is a token the library cannot see into (a parameter, import or other intrinsic)"
        )
    if any(not isinstance(s, str) for s in segments) and not _leading_text(segments):
        raise Unsupported("user data starts with a token the library cannot see into")
    result = _merge(_splice_segments(segments, block, require_mime, shell_as_part))
    if wrap == "base64-literal":
        return base64.b64encode("".join(result).encode("utf-8")).decode("ascii")  # type: ignore[arg-type]
    if len(result) == 1 and isinstance(result[0], str):
        return {"Fn::Base64": result[0]}
    return {"Fn::Base64": {"Fn::Join": ["", result]}}


def literal_text(value: Any) -> Optional[str]:
    """The decoded text of a resolved ``UserData`` value when it holds no token, else None."""
    if isinstance(value, dict) and list(value) == ["Fn::Base64"]:
        segments = _segments(value["Fn::Base64"])
        if all(isinstance(s, str) for s in segments):
            return "".join(segments)  # type: ignore[arg-type]
        return None
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
    return None


def leading_text(value: Any) -> str:
    """The literal text a resolved ``UserData`` value starts with, up to its first token ("" if none)."""
    if isinstance(value, dict) and list(value) == ["Fn::Base64"]:
        return _leading_text(_segments(value["Fn::Base64"]))
    return literal_text(value) or ""


def literal_bytes(value: Any) -> int:
    """Bytes of the literal text of a resolved ``UserData`` value (a lower bound when it holds tokens)."""
    if isinstance(value, dict) and list(value) == ["Fn::Base64"]:
        return sum(len(s.encode("utf-8")) for s in _segments(value["Fn::Base64"]) if isinstance(s, str))
    text = literal_text(value)
    return len(text.encode("utf-8")) if text is not None else 0
