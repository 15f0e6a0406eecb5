"""EC2 Image Builder: ``AuditBacklogComponent``, a Linux component that bakes the boot unit into an image.

Golden AMIs are built by Image Builder, not launched from user data CDK can see. This component installs
the same script the user data runs (``userdata/audit-backlog.sh``, comments stripped as for the block,
its inputs read from the environment) and its boot unit, so every instance launched from the image sizes
the backlog from its own MemTotal before auditd loads the rules, on every boot.

Phases (AWSTOE component document, ``schemaVersion: 1.0``):

- ``build``: ``CreateFile`` writes the component's parameter values to a file and the script to a
  temporary path; ``ExecuteBash`` checks every value against a strict pattern (parameters are text pasted
  by Image Builder: they reach a shell only after that check, and never through the document's
  commands), then runs the script's ``install`` mode (the boot unit, its inputs file, enabled for
  ``auditd.service`` and ``audit-rules.service``) and one ``boot`` run, so the image carries our rules.d
  file; the temporary files are removed.
- ``validate`` (on the build instance, before the snapshot): the unit is enabled, and the audit rules,
  merged by the distribution's own ``augenrules``, load our file's ``-b`` (or a larger one the image
  ships, which is never lowered).
- ``test`` (on an instance launched from the image): the unit ran at this boot and ``auditctl -s``
  shows the limit the merged rules set.

L1 ``CfnComponent`` rather than the alpha L2 (``aws_imagebuilder_alpha.Component``): the L2 adds a
dependency on an experimental package whose API may change in any release, for typed document building
we do not need (the document is generated and checked here, see :func:`check_component_document`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Sequence

from aws_cdk import aws_imagebuilder as imagebuilder
from constructs import Construct

from .policy import BacklogPolicy
from .tuning_options import TuningOptions
from .user_data import FEATURES, _compact_body, script_text

__all__ = [
    "AuditBacklogComponent",
    "COMPONENT_DATA_LIMIT",
    "KNOWN_ACTIONS",
    "check_component_document",
    "component_script",
]

#: Image Builder's limit on inline component data (``InlineComponentData``: 1..16000 characters).
COMPONENT_DATA_LIMIT = 16000
#: AWSTOE action modules (AWS docs, "Action modules supported by AWSTOE component manager").
KNOWN_ACTIONS = frozenset(
    {
        "AppendFile", "Assert", "CopyFile", "CopyFolder", "CreateFile", "CreateFolder", "CreateSymlink",
        "DeleteFile", "DeleteFolder", "ExecuteBash", "ExecuteBinary", "ExecuteDocument", "ExecutePowerShell",
        "InstallMSI", "ListFiles", "MoveFile", "MoveFolder", "ReadFile", "Reboot", "S3Download", "S3Upload",
        "SetFileEncoding", "SetFileOwner", "SetFilePermissions", "SetFolderOwner", "SetFolderPermissions",
        "SetRegistry", "UninstallMSI", "UpdateOS", "WebDownload",
    }
)  # fmt: skip
_PHASES = ("build", "validate", "test")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,127}$")
_SEMVER_RE = re.compile(r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$")
_COMPONENT_NAME_RE = re.compile(r"^[-_A-Za-z0-9][-_A-Za-z 0-9]{0,125}[-_A-Za-z0-9]$")

# Where the build phase puts things (the unit's own paths are the script's: /usr/local/sbin, /etc).
_INPUTS_FILE = "/var/tmp/cdk-audit-backlog.inputs"
_SCRIPT_FILE = "/var/tmp/cdk-audit-backlog.sh"
_INSTALLED_SCRIPT = "/usr/local/sbin/cdk-audit-backlog"
_UNIT = "cdk-audit-backlog.service"
_OUR_RULES = "/etc/audit/rules.d/zz-cdk-audit-backlog.rules"

# Parameter name -> (script input, pattern its value must match in full, description).
_PARAMETERS = {
    "BacklogLimit": ("CAB_TARGET", "auto|[1-9][0-9]{0,9}",
                     "auto (from MemTotal at every boot, follows a resize) or a fixed limit 1..2147483647"),
    "MemoryFractionPpm": ("CAB_FRACTION_PPM", "[1-9][0-9]{0,5}",
                          "auto: share of memory a full queue may take, in parts per million (1..250000)"),
    "MinimumLimit": ("CAB_MIN", "[1-9][0-9]{0,9}", "auto: smallest limit ever chosen"),
    "MaximumLimit": ("CAB_MAX", "[1-9][0-9]{0,9}", "auto: largest limit ever chosen"),
    "BacklogWaitTime": ("CAB_WAIT", "none|[0-9]{1,5}",
                        "--backlog_wait_time in kernel ticks 0..60000, or none to leave it as the image has it"),
    "AllowLower": ("CAB_ALLOW_LOWER", "true|false", "true lowers a larger limit the image ships"),
}  # fmt: skip


def component_script() -> str:
    """The script the component installs: ``userdata/audit-backlog.sh`` with its input section as shipped
    (every input from the environment, with the script's defaults) and its body compacted as for the
    user-data block, with the optional parts an image needs: auto, wait time and the boot unit."""
    from . import user_data

    text = script_text()
    inputs = text.split(user_data._INPUTS_BEGIN, 1)[1].split(user_data._INPUTS_END, 1)[0]
    lines = [line.strip() for line in inputs.splitlines() if line.strip() and not line.strip().startswith("#")]
    features = frozenset(f for f in ("auto", "wait", "unit") if f in FEATURES)
    return "#!/bin/bash\n" + "\n".join(lines) + "\n" + _compact_body(features)


# -- the document ---------------------------------------------------------------------------------


def _scalar(value: str) -> str:
    # JSON strings are YAML double-quoted scalars (ASCII, escaped): no YAML special character can leak.
    return json.dumps(value)


def _literal(value: str, indent: str) -> str:
    """A YAML literal block (``|``) holding ``value`` exactly (it must end in one newline)."""
    lines = value.split("\n")
    # YAML takes the block's indentation from its first line and strips a final run of blank lines.
    if not value.endswith("\n") or value.endswith("\n\n") or value.startswith((" ", "\n")):
        raise ValueError("literal block text must end in one newline and not start with a space or blank line")
    if any(line != line.rstrip() for line in lines):
        raise ValueError("literal block text must not have trailing spaces")
    return "|\n" + "".join((indent + l if l else "") + "\n" for l in lines[:-1])


def _build_commands() -> str:
    checks = " ".join(f"'{var}={pattern}'" for var, pattern, _ in _PARAMETERS.values())
    return "\n".join(
        [
            "set -euo pipefail",
            "say() { echo \"cdk-audit-backlog: $*\"; }",
            "f=" + _INPUTS_FILE,
            "# Every line must be NAME=VALUE with VALUE matching its pattern in full before the file is sourced.",
            f"for c in {checks}; do",
            "  n=${c%%=*}",
            "  grep -Eqx \"$n=(${c#*=})\" \"$f\" || { say \"build: parameter for $n does not match ${c#*=}\"; exit 1; }",
            "done",
            "[ \"$(grep -c '' \"$f\")\" -eq " + str(len(_PARAMETERS)) + " ] || { say \"build: unexpected lines in $f\"; exit 1; }",
            "set -a",
            "# shellcheck disable=SC1090  # every line was matched against its pattern above",
            ". \"$f\"",
            "set +a",
            "[ \"$CAB_WAIT\" != none ] || CAB_WAIT=",
            "if [ \"$CAB_ALLOW_LOWER\" = true ]; then CAB_ALLOW_LOWER=1; else CAB_ALLOW_LOWER=0; fi",
            "if ((CAB_FRACTION_PPM>250000||CAB_MIN>CAB_MAX||CAB_MAX>2147483647||${CAB_WAIT:-0}>60000)) ||"
            " { [ \"$CAB_TARGET\" != auto ] && ((CAB_TARGET>2147483647)); }; then",
            "  say \"build: parameters out of range\"",
            "  exit 1",
            "fi",
            "CAB_UNIT=auto",
            "[ \"$CAB_TARGET\" = auto ] || CAB_UNIT=fixed",
            "export CAB_UNIT CAB_WAIT CAB_ALLOW_LOWER CAB_SOURCE=image-builder",
            "/bin/bash " + _SCRIPT_FILE + " install",
            "/bin/bash " + _INSTALLED_SCRIPT + " boot",
            "rm -f \"$f\" " + _SCRIPT_FILE,
            "",
        ]
    )


_MERGED_B = "awk '$1==\"-b\"{b=$2}END{print b}'"

_VALIDATE_COMMANDS = "\n".join(
    [
        "set -euo pipefail",
        "say() { echo \"cdk-audit-backlog: $*\"; }",
        f"u={_UNIT}",
        "e=$(systemctl is-enabled \"$u\" 2>&1) || :",
        "[ \"$e\" = enabled ] || { say \"validate: $u is not enabled ($e)\"; exit 1; }",
        f"bash -n {_INSTALLED_SCRIPT}",
        f"[ -f {_OUR_RULES} ] || {{ say \"validate: {_OUR_RULES} missing\"; exit 1; }}",
        "# The distribution's own augenrules merges rules.d (no load); audit.rules then holds the -b auditd loads.",
        "augenrules >/dev/null",
        f"m=$({_MERGED_B} /etc/audit/audit.rules)",
        f"o=$({_MERGED_B} {_OUR_RULES})",
        "if [ -n \"$o\" ] && [ \"$m\" != \"$o\" ]; then",
        "  say \"validate: the rules load -b ${m:-none}, our file has -b $o\"",
        "  exit 1",
        "fi",
        "say \"validate: $u enabled; the rules load -b $m${o:+ (ours)}\"",
        "",
    ]
)

_TEST_COMMANDS = "\n".join(
    [
        "set -euo pipefail",
        "say() { echo \"cdk-audit-backlog: $*\"; }",
        f"u={_UNIT}",
        "a=$(systemctl is-active \"$u\" 2>&1) || :",
        "[ \"$a\" = active ] || { say \"test: $u did not run at this boot ($a)\"; exit 1; }",
        "k=$(auditctl -s | awk '$1==\"backlog_limit\"{print $2}')",
        f"m=$({_MERGED_B} /etc/audit/audit.rules)",
        "[ -n \"$k\" ] && [ \"$k\" = \"$m\" ] || { say \"test: kernel backlog_limit ${k:-?}, rules -b ${m:-none}\"; exit 1; }",
        "say \"test: backlog_limit $k ($(grep MemTotal /proc/meminfo))\"",
        "",
    ]
)


def component_document(parameters: Dict[str, str], *, name: str, description: str) -> str:
    """The YAML component document with ``parameters`` (name -> default value)."""
    out: List[str] = [
        f"name: {_scalar(name)}",
        f"description: {_scalar(description)}",
        "schemaVersion: 1.0",
        "parameters:",
    ]
    for param, (_, pattern, about) in _PARAMETERS.items():
        out += [
            f"  - {param}:",
            "      type: string",
            f"      default: {_scalar(parameters[param])}",
            f"      description: {_scalar(about + ' (pattern ' + pattern + ')')}",
        ]
    inputs = "".join(f"{var}={{{{ {param} }}}}\n" for param, (var, _, _) in _PARAMETERS.items())
    out += [
        "phases:",
        "  - name: build",
        "    steps:",
        "      - name: WriteInputsAndScript",
        "        action: CreateFile",
        "        inputs:",
        f"          - path: {_INPUTS_FILE}",
        "            content: " + _literal(inputs, "              ").rstrip("\n"),
        f"          - path: {_SCRIPT_FILE}",
        "            content: " + _literal(component_script(), "              ").rstrip("\n"),
        "      - name: InstallBootUnit",
        "        action: ExecuteBash",
        "        inputs:",
        "          commands:",
        "            - " + _literal(_build_commands(), "              ").rstrip("\n"),
        "  - name: validate",
        "    steps:",
        "      - name: CheckUnitAndRules",
        "        action: ExecuteBash",
        "        inputs:",
        "          commands:",
        "            - " + _literal(_VALIDATE_COMMANDS, "              ").rstrip("\n"),
        "  - name: test",
        "    steps:",
        "      - name: CheckKernelLimit",
        "        action: ExecuteBash",
        "        inputs:",
        "          commands:",
        "            - " + _literal(_TEST_COMMANDS, "              ").rstrip("\n"),
    ]
    return "\n".join(out) + "\n"


def check_component_document(document: Any) -> List[str]:
    """What is wrong with a parsed Linux component document, as far as AWS documents the format
    (top-level keys, ``schemaVersion: 1.0``, phase names, unique step names per phase, known actions,
    parameters as a list of single-key maps with ``type: string``). Empty when nothing is."""
    problems: List[str] = []
    if not isinstance(document, dict):
        return ["the document is not a mapping"]
    allowed = {"name", "description", "schemaVersion", "parameters", "constants", "phases"}
    problems += [f"unknown top-level key {k!r}" for k in document if k not in allowed]
    if str(document.get("schemaVersion")) != "1.0":
        problems.append(f"schemaVersion must be 1.0, got {document.get('schemaVersion')!r}")
    declared = set()
    for entry in document.get("parameters") or []:
        if not (isinstance(entry, dict) and len(entry) == 1):
            problems.append(f"a parameter must be a one-key mapping, got {entry!r}")
            continue
        (pname, spec), = entry.items()
        declared.add(pname)
        if not isinstance(spec, dict) or spec.get("type") != "string":
            problems.append(f"parameter {pname}: type must be string")
        elif set(spec) - {"type", "default", "description"}:
            problems.append(f"parameter {pname}: unknown keys {sorted(set(spec) - {'type', 'default', 'description'})}")
    phases = document.get("phases")
    if not isinstance(phases, list) or not phases:
        return problems + ["phases must be a non-empty list"]
    seen_phases = []
    for phase in phases:
        pname = phase.get("name") if isinstance(phase, dict) else None
        if pname not in _PHASES:
            problems.append(f"phase name must be one of {_PHASES}, got {pname!r}")
        if pname in seen_phases:
            problems.append(f"phase {pname!r} appears twice")
        seen_phases.append(pname)
        steps = phase.get("steps") if isinstance(phase, dict) else None
        if not isinstance(steps, list) or not steps:
            problems.append(f"phase {pname!r} has no steps")
            continue
        names = [s.get("name") for s in steps if isinstance(s, dict)]
        if len(names) != len(set(names)):
            problems.append(f"phase {pname!r}: step names are not unique: {names}")
        for step in steps:
            if not isinstance(step, dict) or not _NAME_RE.match(str(step.get("name", ""))):
                problems.append(f"phase {pname!r}: step without an alphanumeric name: {step!r:.80}")
                continue
            if step.get("action") not in KNOWN_ACTIONS:
                problems.append(f"step {step['name']}: unknown action {step.get('action')!r}")
            if "inputs" not in step:
                problems.append(f"step {step['name']}: no inputs")
            if step.get("action") == "ExecuteBash":
                commands = (step.get("inputs") or {}).get("commands")
                if not (isinstance(commands, list) and commands and all(isinstance(c, str) for c in commands)):
                    problems.append(f"step {step['name']}: ExecuteBash needs inputs.commands, a list of strings")
            if step.get("action") == "CreateFile":
                files = step.get("inputs")
                if not (isinstance(files, list) and all(isinstance(f, dict) and "path" in f for f in files)):
                    problems.append(f"step {step['name']}: CreateFile needs inputs, a list of {{path, content}}")
    used = set(re.findall(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}", json.dumps(document)))
    problems += [f"reference to undeclared parameter {p!r}" for p in sorted(used - declared)]
    return problems


def component_parameters(tuning: TuningOptions) -> Dict[str, str]:
    """The default value of each component parameter for ``tuning``."""
    policy = tuning.policy
    assert policy is not None
    return {
        "BacklogLimit": "auto" if tuning.backlog_limit is None else str(tuning.backlog_limit),
        "MemoryFractionPpm": str(policy.fraction_ppm),
        "MinimumLimit": str(policy.minimum),
        "MaximumLimit": str(policy.maximum),
        "BacklogWaitTime": "none" if tuning.backlog_wait_time is None else str(tuning.backlog_wait_time),
        "AllowLower": "true" if tuning.allow_lower else "false",
    }


# -- the construct --------------------------------------------------------------------------------


class AuditBacklogComponent(Construct):
    """An EC2 Image Builder component (Linux) that installs the audit backlog boot unit into an image.

    Use ``component.arn`` in an image recipe's components (``component.recipe_component()`` gives the
    ``ComponentConfigurationProperty``, with parameter overrides if you pass any).

    :param component_name: the component's name. Default: ``"cdk-audit-backlog"``.
    :param version: the component's semantic version (``MAJOR.MINOR.PATCH``); bump it when the options
        change (Image Builder keeps every version). Default: ``"1.0.0"``.
    :param backlog_limit: a fixed limit, 1..2147483647 (parameter ``BacklogLimit``). Default: None
        (``auto``: each instance sizes the limit from its MemTotal at every boot).
    :param policy: the policy ``auto`` applies (parameters ``MemoryFractionPpm``, ``MinimumLimit``,
        ``MaximumLimit``). Default: ``BacklogPolicy()``.
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000 (``BacklogWaitTime``).
        Default: None (left as the image has it).
    :param allow_lower: lower a larger limit the image ships (``AllowLower``). Default: False.
    :param supported_os_versions: ``SupportedOsVersions`` of the component. Default: None (any Linux).
    :param description: the component's description. Default: a sentence saying what it does.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        component_name: str = "cdk-audit-backlog",
        version: str = "1.0.0",
        backlog_limit: Optional[int] = None,
        policy: Optional[BacklogPolicy] = None,
        backlog_wait_time: Optional[int] = None,
        allow_lower: bool = False,
        supported_os_versions: Optional[Sequence[str]] = None,
        description: str = "Sizes the Linux audit backlog (auditctl -b) from memory on every boot, "
        "before the audit rules load (cdk-audit-backlog boot unit)",
    ) -> None:
        super().__init__(scope, id)
        if not isinstance(component_name, str) or not _COMPONENT_NAME_RE.match(component_name):
            raise ValueError(
                f"component_name must be 2..127 letters, digits, spaces, '-' or '_' "
                f"(not starting or ending with a space), got {component_name!r}"
            )
        if not isinstance(version, str) or not _SEMVER_RE.match(version):
            raise ValueError(f"version must be a semantic version MAJOR.MINOR.PATCH such as 1.0.0, got {version!r}")
        #: The tuning options the component's parameters default to (it always installs the boot unit).
        self.tuning = TuningOptions(
            backlog_limit=backlog_limit, policy=policy, backlog_wait_time=backlog_wait_time, allow_lower=allow_lower
        )
        if supported_os_versions is not None and (
            isinstance(supported_os_versions, str) or not all(isinstance(v, str) and v for v in supported_os_versions)
        ):
            raise ValueError(f"supported_os_versions must be a list of OS version names, got {supported_os_versions!r}")
        if not isinstance(description, str) or not 1 <= len(description) <= 1024:
            raise ValueError("description must be a string of 1..1024 characters")

        #: Default value of each component parameter (what a recipe gets unless it overrides them).
        self.parameters: Dict[str, str] = component_parameters(self.tuning)
        #: The YAML component document (the component's ``Data``).
        self.document = component_document(self.parameters, name=component_name, description=description)
        size = len(self.document)
        if size > COMPONENT_DATA_LIMIT:
            raise ValueError(
                f"the component document is {size} characters; Image Builder accepts at most {COMPONENT_DATA_LIMIT} inline"
            )
        self.component = imagebuilder.CfnComponent(
            self,
            "Resource",
            name=component_name,
            platform="Linux",
            version=version,
            data=self.document,
            description=description,
            supported_os_versions=list(supported_os_versions) if supported_os_versions else None,
        )
        #: The component's ARN (``Fn::GetAtt``), for an image recipe.
        self.arn: str = self.component.attr_arn

    def recipe_component(self, **overrides: Any) -> imagebuilder.CfnImageRecipe.ComponentConfigurationProperty:
        """This component in an image recipe, with parameter overrides by name (e.g. ``BacklogLimit="16384"``).

        Overrides are checked against the same patterns the build phase enforces.
        """
        params = []
        for name, value in overrides.items():
            if name not in _PARAMETERS:
                raise ValueError(f"unknown component parameter {name!r}; known: {', '.join(_PARAMETERS)}")
            pattern = _PARAMETERS[name][1]
            if not isinstance(value, str) or not re.fullmatch(f"(?:{pattern})", value):
                raise ValueError(f"{name} must match {pattern}, got {value!r}")
            params.append(imagebuilder.CfnImageRecipe.ComponentParameterProperty(name=name, value=[value]))
        return imagebuilder.CfnImageRecipe.ComponentConfigurationProperty(
            component_arn=self.arn, parameters=params or None
        )
