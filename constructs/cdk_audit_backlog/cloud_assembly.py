"""Reads a synthesized cloud assembly (``cdk.out``): its stacks, their templates and their nested stacks.

- ``manifest.json`` lists the artifacts: a stack (``aws:cloudformation:stack``) names its template file, its
  deployed name and environment; a Stage is a nested assembly (``cdk:cloud-assembly``) in a directory of its
  own with a manifest of its own.
- A nested stack's template is a file asset of its parent stack: the resource's ``aws:asset:path`` Metadata
  names the file, or, where asset metadata is off, its ``TemplateURL`` ends in the asset's object key
  ``<hash>.json``, which the parent's ``.assets.json`` maps to the file.

``impact`` reads the stacks, ``report`` every template file, :class:`.check.AuditBacklogCheck` the nested
stacks of the templates CDK hands it. No CDK import: the operator CLI reads assemblies without starting
jsii's Node process.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .testing import decode_user_data

__all__ = [
    "AssemblyError",
    "SynthesizedStack",
    "AssemblyTemplate",
    "assembly_stacks",
    "assembly_templates",
    "nested_stack_templates",
    "read_template",
]

MANIFEST = "manifest.json"
#: How deep Stages may nest (a guard against a manifest that lists itself).
_MAX_DEPTH = 10


class AssemblyError(ValueError):
    """The assembly, or one of its files, is missing or cannot be read (the message names which)."""


@dataclass(frozen=True)
class SynthesizedStack:
    """One stack of a cloud assembly: its deployed name, environment (None where agnostic) and template."""

    artifact_id: str
    stack_name: str
    account: Optional[str]
    region: Optional[str]
    template: Dict[str, Any]


@dataclass(frozen=True)
class AssemblyTemplate:
    """One template file of a cloud assembly (a stack's or a nested stack's): where it is, its path relative
    to the assembly's directory (``assembly-Prod/ProdSvc.template.json``) and its content."""

    path: Path
    name: str
    template: Dict[str, Any]


def read_template(path: Path) -> Dict[str, Any]:
    """A template file's JSON object; :class:`AssemblyError` when it cannot be read or is not an object."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AssemblyError(f"{path}: {e}") from None
    if not isinstance(loaded, dict):
        raise AssemblyError(f"{path}: not a JSON object")
    return loaded


def assembly_stacks(directory: Path) -> List[SynthesizedStack]:
    """Every stack of the assembly in ``directory``, nested assemblies (Stages) included, from its
    ``manifest.json`` (artifacts sorted by id within each manifest); :class:`AssemblyError` for none."""
    if not (directory / MANIFEST).is_file():
        raise AssemblyError(f"{directory} has no {MANIFEST} (run cdk synth first)")
    out: List[SynthesizedStack] = []
    for base, artifact_id, artifact in _stack_artifacts(directory, 0):
        props = artifact.get("properties") or {}
        account, region = _environment(artifact.get("environment", ""))
        template = read_template(base / props["templateFile"])
        name = props.get("stackName") or artifact_id
        out.append(SynthesizedStack(artifact_id, name, account, region, template))
    if not out:
        raise AssemblyError(f"no stacks in {directory}")
    return out


def _stack_artifacts(directory: Path, depth: int) -> Iterator[Tuple[Path, str, Mapping[str, Any]]]:
    """``(assembly directory, artifact id, artifact)`` of every stack in the manifest of ``directory``, and
    in those of its nested assemblies at their place in the order."""
    manifest = read_template(directory / MANIFEST)
    for artifact_id, artifact in sorted((manifest.get("artifacts") or {}).items()):
        props = artifact.get("properties") or {}
        if artifact.get("type") == "aws:cloudformation:stack":
            yield directory, artifact_id, artifact
        elif artifact.get("type") == "cdk:cloud-assembly" and depth < _MAX_DEPTH:
            yield from _stack_artifacts(directory / props["directoryName"], depth + 1)


def _environment(env: str) -> Tuple[Optional[str], Optional[str]]:
    """``aws://ACCOUNT/REGION``; CDK writes ``unknown-account`` / ``unknown-region`` for agnostic stacks."""
    parts = env.replace("aws://", "", 1).split("/")
    account = parts[0] if parts and parts[0] and parts[0] != "unknown-account" else None
    region = parts[1] if len(parts) > 1 and parts[1] != "unknown-region" else None
    return account, region


def assembly_templates(directory: Path) -> List[AssemblyTemplate]:
    """Every template file of the assembly, sorted by path: each stack's (nested assemblies included) and
    its nested stacks'. A directory without a ``manifest.json`` (template files put there by hand) gives
    every ``*.template.json`` below it."""
    if not directory.is_dir():
        raise AssemblyError(f"{directory} is not a directory (run cdk synth first)")
    if not (directory / MANIFEST).is_file():
        paths = sorted(directory.rglob("*.template.json"))
        if not paths:
            raise AssemblyError(f"no *.template.json under {directory}")
        return [AssemblyTemplate(p, str(p.relative_to(directory)), read_template(p)) for p in paths]
    root = os.path.abspath(directory)
    found: Dict[Path, AssemblyTemplate] = {}  # by name: nested stacks come back as absolute paths
    pending = [
        base / artifact["properties"]["templateFile"] for base, _, artifact in _stack_artifacts(directory, 0)
    ]
    while pending:
        path = pending.pop()
        name = Path(os.path.relpath(os.path.abspath(path), root))
        if name in found:
            continue
        found[name] = AssemblyTemplate(path, str(name), read_template(path))
        resources = found[name].template.get("Resources") or {}
        pending.extend(Path(p) for p in nested_stack_templates(str(path), resources))
    if not found:
        raise AssemblyError(f"no stacks in {directory}")
    return [found[name] for name in sorted(found)]


def nested_stack_templates(template_path: str, resources: Mapping[str, Any]) -> Iterator[str]:
    """Template files of the nested stacks among ``resources`` (of the template at ``template_path``) that
    exist in its assembly directory; never the template itself."""
    base = os.path.dirname(os.path.abspath(template_path))
    files: Optional[Dict[str, str]] = None
    for resource in resources.values():
        if not isinstance(resource, Mapping) or resource.get("Type") != "AWS::CloudFormation::Stack":
            continue
        asset_path = (resource.get("Metadata") or {}).get("aws:asset:path")
        if not isinstance(asset_path, str):
            url = (resource.get("Properties") or {}).get("TemplateURL")
            text = url if isinstance(url, str) else ("" if url is None else decode_user_data(url))
            match = _OBJECT_KEY_RE.search(text)
            if files is None:
                files = _asset_files(template_path)
            asset_path = files.get(match.group(1)) if match else None
        if isinstance(asset_path, str) and asset_path.endswith(".json"):
            path = os.path.join(base, asset_path)
            if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(template_path):
                yield path


_OBJECT_KEY_RE = re.compile(r"([0-9a-f]{64})\.json")


def _asset_files(template_path: str) -> Dict[str, str]:
    """Asset hash -> file path (relative to the cloud assembly) from the stack's ``.assets.json``, if any.

    Nested stack templates are file assets of the top-level stack; their ``TemplateURL`` ends in the
    asset's object key ``<hash>.json``. Nested templates share their top-level stack's manifest.
    """
    stem = template_path
    for suffix in (".nested.template.json", ".template.json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    candidates = [stem + ".assets.json"] + [
        os.path.join(os.path.dirname(template_path), f)
        for f in sorted(os.listdir(os.path.dirname(template_path) or "."))
        if f.endswith(".assets.json")
    ]
    out: Dict[str, str] = {}
    for manifest in candidates:
        if not os.path.isfile(manifest):
            continue
        try:
            with open(manifest, encoding="utf-8") as f:
                files = (json.load(f).get("files") or {}).items()
        except (OSError, ValueError, AttributeError):
            continue
        for asset_hash, asset in files:
            path = ((asset or {}).get("source") or {}).get("path")
            if isinstance(path, str) and path.endswith(".json"):
                out.setdefault(asset_hash, path)
    return out
