"""EC2 Image Builder: ``AuditBacklogComponent``, a Linux component that bakes the boot unit into an image.

Golden AMIs are built by Image Builder, not launched from user data CDK can see. This component installs
the same script the user data runs (``userdata/audit-backlog.sh``, comments stripped as for the block,
its inputs read from the environment) and its boot unit, so every instance launched from the image sizes
the backlog from its own MemTotal before auditd loads the rules, on every boot.

Phases (AWSTOE component document, ``schemaVersion: 1.0``, built as Python data and written by PyYAML;
each ``ExecuteBash`` step is one shipped script, ``userdata/image-builder-{build,validate,test}.sh``):

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

import base64
import json
import re
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence

import yaml
from aws_cdk import aws_imagebuilder as imagebuilder
from constructs import Construct

from .policy import BacklogPolicy
from .tuning_options import TuningOptions, validate_monitor_interval
from .user_data import FEATURES, _compact_body, deterministic_gzip, script_text

__all__ = [
    "AuditBacklogComponent",
    "BUILD_SCRIPT",
    "COMPONENT_DATA_LIMIT",
    "KNOWN_ACTIONS",
    "TEST_SCRIPT",
    "VALIDATE_SCRIPT",
    "build_script",
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

# Where the CreateFile step writes (the build script uses the same paths; the unit's own paths are the
# boot script's: /usr/local/sbin, /etc).
_INPUTS_FILE = "/var/tmp/cdk-audit-backlog.inputs"
_SCRIPT_FILE = "/var/tmp/cdk-audit-backlog.sh"

# Parameter name -> (script input, pattern its value must match in full, description).
_PARAMETERS = {
    "BacklogLimit": ("CAB_TARGET", "auto|[1-9][0-9]{0,9}",
                     "auto (from MemTotal at every boot, follows a resize) or a fixed limit 1..2147483647"),
    "MemoryFractionPpm": ("CAB_FRACTION_PPM", "[1-9][0-9]{0,5}",
                          "auto: share of memory a full queue may take, in parts per million (1..250000)"),
    "MinimumLimit": ("CAB_MIN", "[1-9][0-9]{0,9}", "auto: smallest limit ever chosen"),
    "MaximumLimit": ("CAB_MAX", "[1-9][0-9]{0,9}", "auto: largest limit ever chosen"),
    "BacklogWaitTime": ("CAB_WAIT", "none|[0-9]{1,5}",
                        "--backlog_wait_time in kernel ticks 0..60000, or none to leave it as the image "
                        "has it"),
    "AllowLower": ("CAB_ALLOW_LOWER", "true|false", "true lowers a larger limit the image ships"),
}  # fmt: skip


def component_script(monitor_interval: Optional[int] = None) -> str:
    """The script the component installs: ``userdata/audit-backlog.sh`` with its input section as shipped
    (every input from the environment, with the script's defaults) and its body compacted as for the
    user-data block, with the optional parts an image needs: auto, wait time and the boot unit; and, with
    ``monitor_interval`` (seconds), the sampler, its interval the script's default for ``CAB_MONITOR``
    (without it the ``CAB_MONITOR`` line is left out, so the script is the one it was before the sampler).
    With the sampler the script is shipped gzip-compressed and Base64-encoded in a file that evaluates it
    (the plain one would not fit Image Builder's inline limit)."""
    from . import user_data

    interval = validate_monitor_interval(monitor_interval)
    text = script_text()
    inputs = text.split(user_data._INPUTS_BEGIN, 1)[1].split(user_data._INPUTS_END, 1)[0]
    lines = []
    for line in inputs.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("CAB_MONITOR="):
            if interval is None:
                continue
            line = f'CAB_MONITOR="${{CAB_MONITOR:-{interval}}}"'
        lines.append(line)
    wanted = ("auto", "wait", "unit") + (() if interval is None else ("monitor",))
    features = frozenset(f for f in wanted if f in FEATURES)
    script = "#!/bin/bash\n" + "\n".join(lines) + "\n" + _compact_body(features)
    if interval is None:
        return script
    # With the sampler the plain script would take the document over Image Builder's 16,000 inline
    # characters: the file holds it gzip-compressed and Base64-encoded and evaluates it. It is still one file
    # (BASH_SOURCE), which install mode copies for the unit and the timer, and that copy runs the same way.
    packed = base64.b64encode(deterministic_gzip(script.encode("utf-8"))).decode("ascii")
    return (
        "#!/bin/bash\n"
        "# cdk-audit-backlog (userdata/audit-backlog.sh, gzip+base64): read it with base64 -d | gzip -dc\n"
        f"eval \"$(base64 -d <<<'{packed}'|gzip -dc)\"\n"
    )


# -- the document ---------------------------------------------------------------------------------

#: The ExecuteBash steps, one shipped script each (``userdata/``, package data, shellcheck-clean).
BUILD_SCRIPT = "image-builder-build.sh"
VALIDATE_SCRIPT = "image-builder-validate.sh"
TEST_SCRIPT = "image-builder-test.sh"


def _shipped(name: str) -> str:
    return resources.files(__package__).joinpath("userdata", name).read_text(encoding="utf-8")


def build_script() -> str:
    """The build phase's commands (``userdata/image-builder-build.sh``). Its ``checks`` line is the shell's
    own copy of the parameter patterns (the values are checked there, on the build instance, before any
    shell sees them; :meth:`AuditBacklogComponent.recipe_component` checks overrides here at synth time):
    a script whose line differs from ``_PARAMETERS``, or that names other paths, is refused."""
    text = _shipped(BUILD_SCRIPT)
    checks = "checks=(" + " ".join(f"'{var}={pattern}'" for var, pattern, _ in _PARAMETERS.values()) + ")"
    if checks not in text.splitlines():
        raise RuntimeError(f"{BUILD_SCRIPT} must check the component parameters with the line: {checks}")
    for path in (_INPUTS_FILE, _SCRIPT_FILE):
        if path not in text:
            raise RuntimeError(f"{BUILD_SCRIPT} does not use {path}, where the CreateFile step writes")
    return text


class _ComponentDumper(yaml.SafeDumper):
    """PyYAML's safe dumper with text of several lines (scripts, files) as literal blocks (``|``) and
    sequences indented under their key, as AWS writes component documents."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: _ComponentDumper, value: str) -> yaml.ScalarNode:
    if "\n" not in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value)
    # PyYAML quotes text a literal block cannot hold (trailing spaces, control characters) without saying
    # so; a script must stay readable in the console, so such text is refused here instead.
    if not dumper.analyze_scalar(value).allow_block:
        raise ValueError(f"text of several lines that a YAML literal block cannot hold: {value[:60]!r}...")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


_ComponentDumper.add_representer(str, _represent_str)


def _bash_step(name: str, script: str) -> Dict[str, Any]:
    return {"name": name, "action": "ExecuteBash", "inputs": {"commands": [script]}}


def component_document(
    parameters: Dict[str, str], *, name: str, description: str, monitor_interval: Optional[int] = None
) -> str:
    """The YAML component document with ``parameters`` (name -> default value); with ``monitor_interval``
    the installed script also installs the sampler (see :func:`component_script`)."""
    inputs = "".join(f"{var}={{{{ {param} }}}}\n" for param, (var, _, _) in _PARAMETERS.items())
    document = {
        "name": name,
        "description": description,
        "schemaVersion": 1.0,
        "parameters": [
            {param: {"type": "string", "default": parameters[param],
                     "description": f"{about} (pattern {rule})"}}
            for param, (_, rule, about) in _PARAMETERS.items()
        ],
        "phases": [
            {
                "name": "build",
                "steps": [
                    {
                        "name": "WriteInputsAndScript",
                        "action": "CreateFile",
                        "inputs": [
                            {"path": _INPUTS_FILE, "content": inputs},
                            {"path": _SCRIPT_FILE, "content": component_script(monitor_interval)},
                        ],
                    },
                    _bash_step("InstallBootUnit", build_script()),
                ],
            },
            {"name": "validate", "steps": [_bash_step("CheckUnitAndRules", _shipped(VALIDATE_SCRIPT))]},
            {"name": "test", "steps": [_bash_step("CheckKernelLimit", _shipped(TEST_SCRIPT))]},
        ],
    }
    # yaml.safe_dump with our SafeDumper subclass; no line folding (long shell lines stay as they are).
    text = yaml.dump(document, Dumper=_ComponentDumper, sort_keys=False, width=1 << 20)
    if yaml.safe_load(text) != document:  # pragma: no cover - PyYAML's round trip; checked, not assumed
        raise RuntimeError("the component document does not read back as written")
    return text


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
            problems.append(
                f"parameter {pname}: unknown keys {sorted(set(spec) - {'type', 'default', 'description'})}"
            )
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
                if not (
                    isinstance(commands, list) and commands and all(isinstance(c, str) for c in commands)
                ):
                    problems.append(
                        f"step {step['name']}: ExecuteBash needs inputs.commands, a list of strings"
                    )
            if step.get("action") == "CreateFile":
                files = step.get("inputs")
                if not (isinstance(files, list) and all(isinstance(f, dict) and "path" in f for f in files)):
                    problems.append(
                        f"step {step['name']}: CreateFile needs inputs, a list of {{path, content}}"
                    )
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
        change, and when a new release of this package changes the document (Image Builder keeps every
        version and refuses new data under an existing one). Default: ``"1.1.0"``.
    :param backlog_limit: a fixed limit, 1..2147483647 (parameter ``BacklogLimit``). Default: None
        (``auto``: each instance sizes the limit from its MemTotal at every boot).
    :param policy: the policy ``auto`` applies (parameters ``MemoryFractionPpm``, ``MinimumLimit``,
        ``MaximumLimit``). Default: ``BacklogPolicy()``.
    :param backlog_wait_time: ``--backlog_wait_time`` in kernel ticks, 0..60000 (``BacklogWaitTime``).
        Default: None (left as the image has it).
    :param allow_lower: lower a larger limit the image ships (``AllowLower``). Default: False.
    :param monitor_interval: seconds between two samples of the audit status published to the CloudWatch
        agent's StatsD listener, 10..3600: the build also installs the sampler's systemd timer, so every
        instance of the image samples from its first boot. Fixed in the installed script when the document
        is synthesized (not a component parameter: a new interval is a new component version). Default:
        None (no sampler).
    :param supported_os_versions: ``SupportedOsVersions`` of the component. Default: None (any Linux).
    :param description: the component's description. Default: a sentence saying what it does.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        component_name: str = "cdk-audit-backlog",
        version: str = "1.1.0",
        backlog_limit: Optional[int] = None,
        policy: Optional[BacklogPolicy] = None,
        backlog_wait_time: Optional[int] = None,
        allow_lower: bool = False,
        monitor_interval: Optional[int] = None,
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
            raise ValueError(
                f"version must be a semantic version MAJOR.MINOR.PATCH such as 1.0.0, got {version!r}"
            )
        #: The tuning options the component's parameters default to (it always installs the boot unit).
        self.tuning = TuningOptions(
            backlog_limit=backlog_limit,
            policy=policy,
            backlog_wait_time=backlog_wait_time,
            allow_lower=allow_lower,
            monitor_interval=monitor_interval,
        )
        if supported_os_versions is not None and (
            isinstance(supported_os_versions, str)
            or not all(isinstance(v, str) and v for v in supported_os_versions)
        ):
            raise ValueError(
                f"supported_os_versions must be a list of OS version names, got {supported_os_versions!r}"
            )
        if not isinstance(description, str) or not 1 <= len(description) <= 1024:
            raise ValueError("description must be a string of 1..1024 characters")

        #: Default value of each component parameter (what a recipe gets unless it overrides them).
        self.parameters: Dict[str, str] = component_parameters(self.tuning)
        #: The YAML component document (the component's ``Data``).
        self.document = component_document(
            self.parameters,
            name=component_name,
            description=description,
            monitor_interval=self.tuning.monitor_interval,
        )
        size = len(self.document)
        if size > COMPONENT_DATA_LIMIT:
            raise ValueError(
                f"the component document is {size} characters; Image Builder accepts at most "
                f"{COMPONENT_DATA_LIMIT} inline"
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

    def recipe_component(
        self, **overrides: Any
    ) -> imagebuilder.CfnImageRecipe.ComponentConfigurationProperty:
        """This component in an image recipe, with parameter overrides by name (e.g.
        ``BacklogLimit="16384"``).

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
