"""User data as EC2 hands it to cloud-init, taken from a synthesized CloudFormation template.

Deliberately independent of the code that produced the block (no import of ``cdk_audit_backlog``): a bug
there must not hide in the decoder too. EC2 receives ``Fn::Base64(x)`` already resolved by CloudFormation,
so decoding means resolving ``x``: a string, or ``Fn::Join`` / ``Fn::Sub`` over strings and pseudo
parameters (``Ref: AWS::Region`` and friends). Anything else (a ``Ref`` to a resource, ``Fn::GetAtt``) needs
a value from the caller, else :class:`DecodeError`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

REPO = Path(__file__).resolve().parent.parent

PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "AuditBacklogExample",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/AuditBacklogExample/e2e",
    "AWS::NoValue": "",
}

# Where each launch resource keeps its user data.
USER_DATA_PATHS = {
    "AWS::EC2::Instance": ("UserData",),
    "AWS::EC2::LaunchTemplate": ("LaunchTemplateData", "UserData"),
    "AWS::AutoScaling::LaunchConfiguration": ("UserData",),
}


class DecodeError(ValueError):
    pass


def resolve(value: Any, refs: Optional[Mapping[str, str]] = None) -> str:
    """The string CloudFormation makes of ``value`` (an intrinsic over strings and parameters)."""
    names = {**PSEUDO, **(refs or {})}
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            if arg not in names:
                raise DecodeError(f"Ref {arg!r} has no value (pass it in refs)")
            return names[arg]
        if fn == "Fn::Join":
            if not (
                isinstance(arg, list)
                and len(arg) == 2
                and isinstance(arg[0], str)
                and isinstance(arg[1], list)
            ):
                raise DecodeError(f"malformed Fn::Join: {arg!r}")
            return arg[0].join(resolve(p, refs) for p in arg[1])
        if fn == "Fn::Sub":
            template, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            scope = {**names, **{k: resolve(v, refs) for k, v in local.items()}}

            def sub(m: "re.Match[str]") -> str:
                name = m.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name not in scope:
                    raise DecodeError(f"Fn::Sub variable {name!r} has no value")
                return scope[name]

            return re.sub(r"\$\{([^}]+)\}", sub, template)
        if fn == "Fn::Base64":
            raise DecodeError("nested Fn::Base64 is not user data text")
    raise DecodeError(f"cannot resolve {json.dumps(value)[:200]}")


def user_data_of(resource: Mapping[str, Any], refs: Optional[Mapping[str, str]] = None) -> Optional[bytes]:
    """The user data bytes of one template resource, or None if it has none."""
    path = USER_DATA_PATHS.get(resource.get("Type", ""))
    if path is None:
        return None
    node: Any = resource.get("Properties", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if not (isinstance(node, dict) and set(node) == {"Fn::Base64"}):
        raise DecodeError(f"UserData is not Fn::Base64 of text: {json.dumps(node)[:200]}")
    return resolve(node["Fn::Base64"], refs).encode("utf-8")


def user_data_by_resource(
    template: Mapping[str, Any], refs: Optional[Mapping[str, str]] = None
) -> Dict[str, bytes]:
    out = {}
    for logical_id, resource in template.get("Resources", {}).items():
        data = user_data_of(resource, refs)
        if data is not None:
            out[logical_id] = data
    return out


def synthesize(app: Path, outdir: Path) -> Dict[str, dict]:
    """Runs ``python app`` with CDK_OUTDIR=outdir (what ``cdk synth`` does) and returns stack name ->
    template."""
    env = dict(os.environ)
    env.update(
        CDK_OUTDIR=str(outdir),
        CDK_VALIDATION="false",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        CDK_DISABLE_CLI_TELEMETRY="true",
    )
    proc = subprocess.run(
        [sys.executable, str(app.resolve())],  # the interpreter running the harness (make: .venv/bin/python)
        cwd=str(app.parent), env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"synthesizing {app.name} failed:\n{proc.stderr[-3000:]}")
    templates = {}
    for path in sorted(outdir.glob("*.template.json")):
        templates[path.name[: -len(".template.json")]] = json.loads(path.read_text())
    if not templates:
        raise RuntimeError(f"{app.name} synthesized no template into {outdir}")
    return templates


def synthesized_user_data(app: Path) -> Dict[str, bytes]:
    """``Stack/LogicalId`` -> user data bytes for every launch in the app's synthesized templates."""
    with tempfile.TemporaryDirectory(prefix="e2e-synth-") as tmp:
        templates = synthesize(app, Path(tmp))
    out = {}
    for stack, template in templates.items():
        for logical_id, data in user_data_by_resource(template).items():
            out[f"{stack}/{logical_id}"] = data
    return out


def find(user_data: Mapping[str, bytes], resource_type_prefix: str) -> bytes:
    """The one entry whose logical id starts with the prefix (``Web``, ``WorkerTemplate``)."""
    hits = [v for k, v in user_data.items() if k.split("/", 1)[1].startswith(resource_type_prefix)]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} launches match {resource_type_prefix!r} in {sorted(user_data)}")
    return hits[0]


def block_target(user_data: bytes) -> str:
    """``CAB_TARGET`` as the block states it (a number or ``auto``), read from the text, not from the
    renderer."""
    m = re.search(rb"^CAB_TARGET=(\S+)$", user_data, re.M)
    if not m:
        raise DecodeError("no CAB_TARGET= line in the user data")
    return m.group(1).decode()
