"""Reads what a synthesized template launches: decoded user data and the tuning it carries.

For users' own snapshot tests and for :mod:`.check`. This module re-implements the reading side of the
block contract (``docs/design.md``) on purpose: it never imports the code that *writes* the block
(``launch_decision.py``, ``splice.py``, ``user_data.py``), so a bug in the writer cannot hide in the reader
too.

Typical use::

    from aws_cdk.assertions import Template
    from cdk_audit_backlog.testing import launches

    for launch in launches(Template.from_stack(stack)):
        assert launch.tuning is not None and launch.tuning.count == 1, launch.logical_id

What is decoded:

- ``{"Fn::Base64": X}`` where X is a literal string, ``Fn::Join``, ``Fn::Sub`` or a mix of them;
  a literal Base64 string (what a hand-written L1 may hold).
- Tokens become stable placeholders, so a snapshot does not change with CDK's token numbering:
  ``{"Ref": "Queue"}`` -> ``${Ref:Queue}``, a pseudo parameter ``{"Ref": "AWS::Region"}`` ->
  ``${AWS::Region}``, ``{"Fn::GetAtt": ["Queue", "Arn"]}`` -> ``${Fn::GetAtt:Queue.Arn}``, any other intrinsic
  -> ``${Fn::Name:<its argument as compact JSON>}``. Variables of an ``Fn::Sub`` are substituted when they are
  literal strings, rendered as above when they are intrinsics, and left as ``${Name}`` otherwise.
- MIME multipart user data is returned whole by :func:`decode_user_data`; :func:`shell_parts` parses it
  with Python's ``email`` package and returns the ``text/x-shellscript`` parts (Base64 or quoted-printable
  transfer encodings undone).

The tuning is read only from shell parts: a block counts when a line is exactly the begin marker
``# >>> cdk-audit-backlog >>>`` (:data:`BLOCK_BEGIN`); its ``CAB_*`` lines are read up to the end marker.
A compact block (its body gzip-compressed and Base64-encoded, decoded at boot by ``base64 -d | gzip -dc``)
keeps its markers and ``CAB_*`` lines plain, so it is read the same way; :attr:`Block.script` decodes its
body.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import gzip
import json
import zlib
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "Launch",
    "Tuning",
    "MalformedBlock",
    "LAUNCH_TYPES",
    "METADATA_KEY",
    "BLOCK_BEGIN",
    "BLOCK_END",
    "Block",
    "launches",
    "decode_user_data",
    "shell_parts",
    "blocks",
    "block_settings",
    "tuning_of",
    "is_mime",
    "template_dict",
    "user_data_value",
    "OWNER_LINE_RE",
    "OWNER_SETTING_RES",
    "other_owner_settings",
]

#: Resource types that launch EC2 instances with their own user data.
LAUNCH_TYPES = (
    "AWS::EC2::Instance",
    "AWS::EC2::LaunchTemplate",
    "AWS::AutoScaling::LaunchConfiguration",
)
# The reader's copies of the contract's names, for every reader module (check, report, verify) to import.
# The writer keeps its own on purpose (aspect.METADATA_KEY, user_data.BLOCK_BEGIN / BLOCK_END): the code that
# checks the output must not share code with the code that produced it, or a slip in one would hide in both.
#: CloudFormation Metadata key the aspect writes on every launch it saw.
METADATA_KEY = "cdk-audit-backlog"
#: The block's first and last lines.
BLOCK_BEGIN = "# >>> cdk-audit-backlog >>>"
BLOCK_END = "# <<< cdk-audit-backlog <<<"
#: The script's console line naming another owner of the audit socket, e.g. ``cdk-audit-backlog: owner:
#: auditbeat (pid 812) controls the audit socket; its backlog_limit 4096, our target 8192``. The script's
#: exact wording is still being written, so this reads only what any wording of it must hold: the owner's
#: command right after ``owner:``, then anywhere later on the line an optional ``(pid N)``,
#: ``backlog_limit N`` (the owner's) and ``target N`` (ours). One constant for every reader (``verify``);
#: tighten it once the script lands.
OWNER_LINE_RE = re.compile(
    r"cdk-audit-backlog: owner: (?P<owner>[A-Za-z0-9_.+-]+)"
    r"(?:[^\r\n]*?\(pid (?P<pid>[0-9]+)\))?"
    r"(?:[^\r\n]*?backlog_limit[\s=:]*(?P<limit>[0-9]+))?"
    r"(?:[^\r\n]*?target[\s=:]*(?P<target>[0-9]+|auto))?"
)
#: Another owner's own backlog setting in user data that configures it (read outside our block): the owner's
#: name must appear in the user data too. auditbeat: ``backlog_limit: N`` (auditbeat.yml, auditd module);
#: osquery: ``--audit_backlog_limit=N`` (a flag); go-audit: a ``- -b N`` item of its ``rules:``.
OWNER_SETTING_RES: Dict[str, "re.Pattern[str]"] = {
    "auditbeat": re.compile(r"^\s*backlog_limit\s*:\s*['\"]?([0-9]+)", re.MULTILINE),
    "osqueryd": re.compile(r"--audit_backlog_limit(?:=|\s+)['\"]?([0-9]+)"),
    "go-audit": re.compile(r"^\s*-\s+['\"]?-b\s+([0-9]+)", re.MULTILINE),
}
_OWNER_MENTION = {"auditbeat": "auditbeat", "osqueryd": "osquery", "go-audit": "go-audit"}
# The here-document delimiter of the block's script (a compact block has two here-documents, both ending so).
_HEREDOC = "CDK_AUDIT_BACKLOG"
_ASSIGNMENT_RE = re.compile(r"^(CAB_[A-Z_]+)=(.*)$")
_TARGET_RE = re.compile(r"^(auto|[1-9][0-9]{0,9})$")
_SUB_VAR_RE = re.compile(r"\$\{([^}]*)\}")


class MalformedBlock(ValueError):
    """A block was found but its ``CAB_TARGET`` line is missing or holds neither ``auto`` nor a limit."""


@dataclass(frozen=True)
class Tuning:
    """The tuning found in one launch's user data.

    :param target: the backlog limit the block sets, or None for ``auto`` (computed at boot from MemTotal).
    :param source: the block's ``CAB_SOURCE`` (``TYPE/MEMMiB``, ``mixed`` for a group of instance types
        that map to different limits, or ``unknown``).
    :param count: how many blocks the user data carries (more than one means it was tuned twice).
    """

    target: Optional[int]
    source: str
    count: int

    @property
    def is_auto(self) -> bool:
        return self.target is None

    @property
    def is_mixed(self) -> bool:
        """An ``auto`` block of a group whose instance types map to different limits (each machine sizes
        itself at boot; :attr:`Launch.per_type` says what each type gets)."""
        return self.target is None and self.source == "mixed"


@dataclass(frozen=True)
class Launch:
    """One launch resource of a template.

    :param logical_id: the resource's logical id.
    :param resource_type: ``AWS::EC2::Instance``, ``AWS::EC2::LaunchTemplate`` or
        ``AWS::AutoScaling::LaunchConfiguration``.
    :param user_data: the decoded user data, or None when the resource has none.
    :param tuning: the tuning found, or None when no block was found.
    :param metadata: what the resource's ``Metadata["cdk-audit-backlog"]`` says, or None.
    """

    logical_id: str
    resource_type: str
    user_data: Optional[str]
    tuning: Optional[Tuning]
    metadata: Optional[dict]

    @property
    def per_type(self) -> Dict[str, int]:
        """Instance type -> the limit the policy gives it, from the Metadata's ``perType`` (a group whose
        types map to different limits, tuned ``auto``); empty for every other launch."""
        per_type = self.metadata.get("perType") if isinstance(self.metadata, dict) else None
        if not isinstance(per_type, Mapping):
            return {}
        return {str(t): int(v) for t, v in per_type.items() if isinstance(v, int) and not isinstance(v, bool)}

    def limit_for(self, instance_type: str) -> Optional[int]:
        """The limit a machine of ``instance_type`` gets from this launch: the block's fixed limit, or for
        an ``auto`` block the Metadata's per-type limit; None when neither says (auto, type not listed)."""
        if self.tuning is not None and self.tuning.target is not None:
            return self.tuning.target
        return self.per_type.get(instance_type)

    @property
    def skipped(self) -> Optional[str]:
        """The reason in ``{"skipped": reason}`` Metadata, or None."""
        if isinstance(self.metadata, dict) and "skipped" in self.metadata:
            return str(self.metadata["skipped"])
        return None


# -- templates ------------------------------------------------------------------------------------


def template_dict(template: Any) -> Dict[str, Any]:
    """A template as a dict: a dict, anything with ``to_json()`` (``assertions.Template``), or a JSON file
    path."""
    if isinstance(template, Mapping):
        return dict(template)
    to_json = getattr(template, "to_json", None)
    if callable(to_json):
        result = to_json()
        if isinstance(result, Mapping):
            return dict(result)
    if isinstance(template, (str, os.PathLike)):
        with open(template, encoding="utf-8") as f:
            loaded = json.load(f)
        if isinstance(loaded, dict):
            return loaded
    raise TypeError(
        "template must be a dict, an aws_cdk.assertions.Template or a path to a template file, got "
        f"{template!r}"
    )


def user_data_value(resource: Mapping[str, Any]) -> Any:
    """The raw ``UserData`` property of a launch resource (a template's resource entry), or None."""
    properties = resource.get("Properties") or {}
    if resource.get("Type") == "AWS::EC2::LaunchTemplate":
        data = properties.get("LaunchTemplateData")
        return data.get("UserData") if isinstance(data, Mapping) else None
    return properties.get("UserData")


def launches(template: Any) -> List[Launch]:
    """Every launch resource of ``template`` in template order, with decoded user data and tuning.

    Raises :class:`MalformedBlock` when a block's ``CAB_TARGET`` cannot be read.
    """
    resources = template_dict(template).get("Resources") or {}
    out: List[Launch] = []
    for logical_id, resource in resources.items():
        if not isinstance(resource, Mapping) or resource.get("Type") not in LAUNCH_TYPES:
            continue
        resource_type = resource["Type"]
        value = user_data_value(resource)
        user_data = None if value is None else decode_user_data(value)
        metadata = (resource.get("Metadata") or {}).get(METADATA_KEY)
        out.append(
            Launch(
                logical_id=logical_id,
                resource_type=resource_type,
                user_data=user_data,
                tuning=None if user_data is None else tuning_of(user_data),
                metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
            )
        )
    return out


# -- decoding -------------------------------------------------------------------------------------


def decode_user_data(value: Any) -> str:
    """The text a launch's ``UserData`` property decodes to, tokens as stable placeholders.

    ``value`` is the property as it stands in the template: ``{"Fn::Base64": ...}`` or a literal Base64
    string. Anything else (a bare ``Ref`` to a parameter, say) is rendered as a placeholder, because
    CloudFormation passes it on as it is. Raises ValueError for a literal that is not Base64 of UTF-8.
    """
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeError) as e:
            raise ValueError(f"user data literal is not Base64 of UTF-8 text: {e}") from None
    if isinstance(value, Mapping) and list(value) == ["Fn::Base64"]:
        return _render(value["Fn::Base64"])
    return _render(value)


def _render(value: Any) -> str:
    """Renders a CloudFormation string expression to text, intrinsics as placeholders."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, Mapping) and len(value) == 1:
        (name, arg), = value.items()
        if name == "Fn::Join" and isinstance(arg, list) and len(arg) == 2:
            delimiter, parts = arg
            if isinstance(delimiter, str) and isinstance(parts, list):
                return delimiter.join(_render(p) for p in parts)
        if name == "Fn::Sub":
            return _render_sub(arg)
        if name == "Fn::Base64" and _is_literal(arg):
            # A nested Base64 of literal text (MultipartUserData's base64 parts): CloudFormation encodes
            # it, so we do too, and the MIME part decodes to the real script.
            return base64.b64encode(_render(arg).encode("utf-8")).decode("ascii")
        if name == "Ref" and isinstance(arg, str):
            return "${" + arg + "}" if arg.startswith("AWS::") else "${Ref:" + arg + "}"
        if name == "Fn::GetAtt":
            if isinstance(arg, list) and all(isinstance(a, str) for a in arg):
                return "${Fn::GetAtt:" + ".".join(arg) + "}"
            if isinstance(arg, str):
                return "${Fn::GetAtt:" + arg + "}"
        return "${" + name + ":" + _compact(arg) + "}"
    return "${" + _compact(value) + "}"


def _is_literal(value: Any) -> bool:
    """True when ``value`` renders without any placeholder (only strings and Fn::Join of them)."""
    if isinstance(value, str):
        return True
    if isinstance(value, Mapping) and list(value) == ["Fn::Join"]:
        arg = value["Fn::Join"]
        return (
            isinstance(arg, list)
            and len(arg) == 2
            and isinstance(arg[0], str)
            and isinstance(arg[1], list)
            and all(_is_literal(p) for p in arg[1])
        )
    return False


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _render_sub(arg: Any) -> str:
    if isinstance(arg, str):
        template, variables = arg, {}
    elif isinstance(arg, list) and arg and isinstance(arg[0], str):
        template = arg[0]
        variables = arg[1] if len(arg) > 1 and isinstance(arg[1], Mapping) else {}
    else:
        return "${Fn::Sub:" + _compact(arg) + "}"

    def substitute(match: "re.Match[str]") -> str:
        name = match.group(1)
        if name.startswith("!"):  # ${!Literal} is CloudFormation's escape for a literal ${Literal}
            return "${" + name[1:] + "}"
        if name in variables:
            return _render(variables[name])
        if name.startswith("AWS::"):
            return "${" + name + "}"
        if "." in name:  # ${Resource.Attribute} is a GetAtt
            return "${Fn::GetAtt:" + name + "}"
        return "${Ref:" + name + "}"

    return _SUB_VAR_RE.sub(substitute, template)


# -- MIME and shell -------------------------------------------------------------------------------


def is_mime(user_data: str) -> bool:
    """Whether ``user_data`` is a MIME document (cloud-init's multipart format)."""
    head = user_data.lstrip("\ufeff").split("\n\n", 1)[0].split("\r\n\r\n", 1)[0].lower()
    first = head.split("\n", 1)[0]
    return first.startswith(("content-type:", "mime-version:")) and "content-type:" in head


def shell_parts(user_data: str) -> List[str]:
    """The shell scripts in ``user_data``: every ``text/x-shellscript`` part of a MIME document, in order,
    or the whole text when it is not MIME."""
    if not is_mime(user_data):
        return [user_data]
    message = email.message_from_string(user_data, policy=email.policy.compat32)
    out: List[str] = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_type() != "text/x-shellscript":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            out.append(payload.decode(charset))
        except (LookupError, UnicodeDecodeError):
            out.append(payload.decode("utf-8", errors="replace"))
    return out


@dataclass(frozen=True)
class Block:
    """One block of a shell script: its ``CAB_*`` assignments (the first of each name) and whether its end
    marker was found (a block that is not closed runs to the end of its script).

    :param compact: the compact form: its second line decodes the body with ``base64 -d | gzip -dc``.
    :param script: the text the block's ``/bin/bash`` runs (its inputs, then its body; a compact block's body
        decoded), or None where it cannot be read: a compact body that is not Base64 of gzip of UTF-8 text,
        or a block without its here-document delimiter.
    """

    settings: Dict[str, str]
    closed: bool
    compact: bool = False
    script: Optional[str] = None


def _block(lines: List[str], closed: bool) -> Block:
    """A block from the lines between its markers."""
    settings: Dict[str, str] = {}
    for line in lines:
        match = _ASSIGNMENT_RE.match(line)
        if match and match.group(1) not in settings:
            settings[match.group(1)] = match.group(2)
    compact = bool(lines) and "base64 -d" in lines[0]
    ends = [i for i, line in enumerate(lines) if line == _HEREDOC]
    script: Optional[str] = None
    if compact and len(ends) >= 2:
        inputs, payload = lines[1 : ends[0]], "".join(lines[ends[0] + 1 : ends[1]])
        try:
            body = gzip.decompress(base64.b64decode(payload, validate=True)).decode("utf-8")
        except (binascii.Error, ValueError, EOFError, OSError, zlib.error, UnicodeDecodeError):
            body = None
        if body is not None:
            script = "".join(line + "\n" for line in inputs) + body
    elif not compact and ends:
        script = "".join(line + "\n" for line in lines[1 : ends[0]])
    return Block(settings, closed, compact, script)


def blocks(user_data: str) -> List[Block]:
    """Every block in the shell parts of ``user_data``, in order."""
    found: List[Block] = []
    for script in shell_parts(user_data):
        current: Optional[List[str]] = None
        for line in script.splitlines():
            if line == BLOCK_BEGIN:
                if current is not None:
                    found.append(_block(current, closed=False))
                current = []
            elif line == BLOCK_END:
                if current is not None:
                    found.append(_block(current, closed=True))
                current = None
            elif current is not None:
                current.append(line)
        if current is not None:
            found.append(_block(current, closed=False))
    return found


def block_settings(user_data: str) -> List[Dict[str, str]]:
    """The ``CAB_*`` assignments of every block in the shell parts of ``user_data``, one dict per block."""
    return [b.settings for b in blocks(user_data)]


def other_owner_settings(user_data: str) -> Dict[str, int]:
    """Owner command -> the backlog limit that user data configures for another owner of the audit socket
    (:data:`OWNER_SETTING_RES`), read outside the ``cdk-audit-backlog`` block; the last value of each wins."""
    outside: List[str] = []
    inside = False
    for line in user_data.splitlines():
        if line == BLOCK_BEGIN:
            inside = True
        elif line == BLOCK_END:
            inside = False
        elif not inside:
            outside.append(line)
    text = "\n".join(outside)
    found: Dict[str, int] = {}
    for owner, pattern in OWNER_SETTING_RES.items():
        if _OWNER_MENTION[owner] not in text:
            continue
        values = pattern.findall(text)
        if values:
            found[owner] = int(values[-1])
    return found


def tuning_of(user_data: str) -> Optional[Tuning]:
    """The tuning ``user_data`` carries (read from its first block), or None when it has no block."""
    found = block_settings(user_data)
    if not found:
        return None
    first = found[0]
    target = first.get("CAB_TARGET")
    if target is None or not _TARGET_RE.match(target):
        raise MalformedBlock(f"CAB_TARGET must be 'auto' or a positive integer, got {target!r}")
    return Tuning(
        target=None if target == "auto" else int(target),
        source=first.get("CAB_SOURCE", "unknown"),
        count=len(found),
    )

