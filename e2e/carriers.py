"""e2e scenarios for the carriers that are not CDK user data (``python -m e2e.carriers [--suite S] [name
...]``).

- ``karpenter``: the AL2023 node class's ``userData`` as the node receives it after Karpenter's merge
  (Karpenter's NodeConfig part first, then the parts of our document), booted at 1 GiB on an image whose
  rules set no ``-b`` (Fedora's rules file; Amazon Linux 2023 may ship the same) with
  ``audit_backlog_limit=8192`` on the kernel command line, as a STIG-hardened AL2023 image boots: cloud-init
  runs our shell part, the block computes 1024 from MemTotal and keeps the command line's larger 8192 (the
  machine's existing limit), writes no smaller ``-b``; the machine then reboots and the boot unit keeps 8192
  too. One run, two boots.
- ``image-builder``: the Image Builder component's build and validate phases, taken from the synthesized
  template's ``AWS::ImageBuilder::Component`` document, run on a "build instance" (the AL2-like image,
  1 GiB; cloud-init stands in for Image Builder's agent, as root on a running system); then the same disk
  is started as a launched instance at 1 GiB that runs the component's test phase as its user data, and
  that instance started again at 8 GiB. The limit is read right after the rules load
  (``e2e-early.service``). Three boots.

The user data comes from the library (``karpenter_user_data``), exactly as a manifest would carry it.
"""

from __future__ import annotations

import json
import time
from typing import Dict, Optional

from cdk_audit_backlog.karpenter import karpenter_user_data

from . import image as images
from . import vm
from .scenarios import M5_LARGE_MIB, T3_MICRO_MIB, Scenario, summary, workdir

KARPENTER_BOUNDARY = "//"
#: What a STIG-hardened image has on its kernel command line (the benchmark's exact value).
STIG_CMDLINE_LIMIT = 8192
# What Karpenter puts first on AL2023 (its own NodeConfig; values as Karpenter fills them in).
KARPENTER_NODE_CONFIG = (
    "Content-Type: application/node.eks.aws\n"
    "\n"
    "apiVersion: node.eks.aws/v1alpha1\n"
    "kind: NodeConfig\n"
    "spec:\n"
    "  cluster:\n"
    "    name: e2e\n"
    "    apiServerEndpoint: https://example.invalid\n"
    "    certificateAuthority: Cg==\n"
    "    cidr: 10.100.0.0/16\n"
)


def karpenter_merged(user_data: str) -> bytes:
    """The document an AL2023 node receives: Karpenter's NodeConfig part, then every part of ``user_data``
    (a MIME document) in order, re-wrapped under one boundary as Karpenter's merge does."""
    import email
    import email.policy

    message = email.message_from_string(user_data, policy=email.policy.compat32)
    if not message.is_multipart():
        raise ValueError("the node class userData must be MIME for this merge")
    parts = [KARPENTER_NODE_CONFIG] + [part.as_string() for part in message.get_payload()]
    body = "".join(f"--{KARPENTER_BOUNDARY}\n{p.rstrip(chr(10))}\n" for p in parts)
    head = f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{KARPENTER_BOUNDARY}"\n\n'
    return (head + body + f"--{KARPENTER_BOUNDARY}--\n").encode()


def karpenter_al2023(suite: str = images.DEFAULT_SUITE) -> Scenario:
    started = time.monotonic()
    ud = karpenter_merged(karpenter_user_data("AL2023"))
    img = images.build_image(images.NO_B, suite)
    wd = workdir(f"{suite}/karpenter")
    run = vm.boot(img, name="karpenter-al2023", workdir=wd, user_data=ud, instance_id="i-e2e-karpenter-1",
                  memory_mib=T3_MICRO_MIB, timeout_s=900,
                  extra_append=f"audit_backlog_limit={STIG_CMDLINE_LIMIT} e2e.boots=2")
    return Scenario("karpenter", [run], ud, time.monotonic() - started, suite)


def component_document() -> dict:
    """The component document as CloudFormation gets it: ``Data`` of the synthesized template."""
    import aws_cdk as cdk
    import yaml

    from cdk_audit_backlog.image_builder import AuditBacklogComponent

    app = cdk.App()
    stack = cdk.Stack(app, "Golden")
    AuditBacklogComponent(stack, "AuditBacklog")
    template = app.synth().get_stack_by_name("Golden").template
    (data,) = [r["Properties"]["Data"] for r in template["Resources"].values()
               if r["Type"] == "AWS::ImageBuilder::Component"]
    return yaml.safe_load(data)


def phase_script(document: dict, phases: tuple, parameters: Optional[Dict[str, str]] = None) -> bytes:
    """A shell script doing what Image Builder's agent does for ``phases``: parameters substituted
    (their defaults unless given), ``CreateFile`` entries written, ``ExecuteBash`` commands run, each step
    stopping the phase on failure. Contents travel as Base64, so nothing in them is shell-interpreted."""
    import base64

    values = {
        name: spec.get("default", "")
        for entry in document.get("parameters", [])
        for name, spec in entry.items()
    }
    values.update(parameters or {})

    def substitute(text: str) -> str:
        for name, value in values.items():
            text = text.replace("{{ " + name + " }}", value)
        return text

    lines = ["#!/bin/bash", "set -eu"]
    for phase in document["phases"]:
        if phase["name"] not in phases:
            continue
        for step in phase["steps"]:
            lines.append(f"echo 'E2E-USER step {phase['name']}/{step['name']}'")
            if step["action"] == "CreateFile":
                for f in step["inputs"]:
                    b64 = base64.b64encode(substitute(f["content"]).encode()).decode()
                    lines.append(f"mkdir -p \"$(dirname {f['path']})\"; echo {b64} | base64 -d >{f['path']}")
            elif step["action"] == "ExecuteBash":
                for command in step["inputs"]["commands"]:
                    b64 = base64.b64encode(substitute(command).encode()).decode()
                    lines.append(
                        f"echo {b64} | base64 -d >/run/e2e-step.sh; bash /run/e2e-step.sh ||"
                        f" {{ echo 'E2E-USER step failed: {phase['name']}/{step['name']}'; exit 1; }}"
                    )
            else:
                raise ValueError(f"no stand-in for action {step['action']}")
    lines.append("echo 'E2E-USER phases done'")
    return ("\n".join(lines) + "\n").encode()


def image_builder_resize(suite: str = images.DEFAULT_SUITE) -> Scenario:
    started = time.monotonic()
    document = component_document()
    build = phase_script(document, ("build", "validate"))
    img = images.build_image(images.AL2, suite)
    wd = workdir(f"{suite}/image-builder")
    runs = [vm.boot(img, name="ib-build", workdir=wd, user_data=build, instance_id="i-e2e-ib-build",
                    memory_mib=T3_MICRO_MIB)]
    overlay = wd / "ib-build.qcow2"
    # The launched instance's user data is the test phase (it runs after the rules loaded, so the limit read
    # at the rule load is the boot unit's alone); its second start, at 8 GiB, runs no user data.
    test = phase_script(document, ("test",))
    for name, memory, user_data, extra in (
        ("ib-launch-1gib", T3_MICRO_MIB, test, ""),
        ("ib-launch-8gib", M5_LARGE_MIB, test, vm.NO_CLOUD_INIT),
    ):
        runs.append(vm.boot(img, name=name, workdir=wd, user_data=user_data, instance_id="i-e2e-ib-1",
                            overlay=overlay, memory_mib=memory, extra_append=extra))
    return Scenario("image-builder", runs, build, time.monotonic() - started, suite)


ALL = {"karpenter": karpenter_al2023, "image-builder": image_builder_resize}

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m e2e.carriers")
    ap.add_argument("--suite", choices=images.SUITES, default=images.DEFAULT_SUITE)
    ap.add_argument("names", nargs="*", metavar="scenario", help=f"any of {', '.join(ALL)} (default: all)")
    args = ap.parse_args()
    for name in args.names or list(ALL):
        print(json.dumps(summary(ALL[name](suite=args.suite)), indent=1), flush=True)
