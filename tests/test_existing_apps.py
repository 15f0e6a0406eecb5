"""The one line on realistic existing apps (tests/apps/): tuned exactly once, the user's content kept."""

import email
import importlib
import json
import os
import subprocess

import aws_cdk as cdk
import pytest
import yaml
from aws_cdk import Aspects, assertions

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.testing import launches, shell_parts

BEGIN = "# >>> cdk-audit-backlog >>>"
END = "# <<< cdk-audit-backlog <<<"
APPS = ["mixed_instances", "ecs", "eks", "user_data_kinds", "l1_raw", "fleets"]
CFN_LINT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "cfn-lint"
)


def synth(module, tuned: bool):
    app = cdk.App()
    stacks = module.build(app)
    if tuned:
        AuditBacklog.apply_to(app)
    assembly = app.synth()
    return stacks, {s.stack_name: assembly.get_stack_by_name(s.stack_name).template for s in stacks}


def strip_block(text: str) -> str:
    start = text.index(BEGIN)
    end = text.index(END) + len(END) + 1
    return text[:start] + text[end:]


def expected_for(module, logical_id):
    # The longest prefix wins ("LtReq..." is not "Lt...").
    matches = sorted((k for k in module.EXPECTED if logical_id.startswith(k)), key=len)
    assert matches, f"{logical_id}: no EXPECTED entry in {module.__name__}"
    return module.EXPECTED[matches[-1]]


def assert_user_content_kept(before, after):
    """`after` is `before` plus our block / part, nothing else changed or moved."""
    if before is None:
        parts = shell_parts(after)
        assert len(parts) == 1 and strip_block(parts[0]) == "#!/bin/bash\n", after
        return
    if before.startswith("#!"):
        assert after.startswith(before.split("\n", 1)[0] + "\n" + BEGIN)
        # A shebang-only script gains the newline that ends its shebang line, nothing else.
        assert strip_block(after) == (before if "\n" in before else before + "\n")
        return
    msg = email.message_from_string(after)
    assert msg.is_multipart(), after
    ours, *rest = msg.get_payload()
    assert ours.get_content_type() == "text/x-shellscript" and BEGIN in ours.get_payload()
    if before.startswith("#cloud-config"):
        assert len(rest) == 1 and rest[0].get_content_type() == "text/cloud-config"
        assert rest[0].get_payload() == before
        yaml.safe_load(rest[0].get_payload())
    else:
        original = email.message_from_string(before).get_payload()
        assert [p.as_string() for p in rest] == [p.as_string() for p in original]


@pytest.fixture(scope="module", params=APPS)
def app_case(request):
    module = importlib.import_module(f"tests.apps.{request.param}")
    _, before = synth(module, tuned=False)
    stacks, after = synth(module, tuned=True)
    return request.param, module, stacks, before, after


def test_every_linux_launch_is_tuned_once_and_user_content_kept(app_case):
    name, module, _, before, after = app_case
    seen = set()
    for stack_name, template in after.items():
        originals = {launch.logical_id: launch for launch in launches(before[stack_name])}
        for launch in launches(template):
            expected = expected_for(module, launch.logical_id)
            seen.add(launch.logical_id)
            original = originals[launch.logical_id].user_data
            if expected == "skipped":
                assert launch.tuning is None
                assert "skipped" in launch.metadata
                assert launch.user_data == original, "a skipped launch must keep its user data byte for byte"
                continue
            assert launch.tuning is not None and launch.tuning.count == 1, launch
            assert launch.tuning.target == (None if expected == "auto" else expected), launch
            assert launch.metadata["limit"] == expected
            assert_user_content_kept(original, launch.user_data)
            for part in shell_parts(launch.user_data):
                subprocess.run(["bash", "-n"], input=part, text=True, check=True)
    missing = [
        k
        for k in module.EXPECTED
        if not any(expected_for(module, s) is module.EXPECTED[k] and s.startswith(k) for s in seen)
    ]
    assert not missing, f"launches expected but not found: {missing}"


def test_templates_pass_cfn_lint(app_case, tmp_path):
    name, _, _, _, after = app_case
    for stack_name, template in after.items():
        path = tmp_path / f"{stack_name}.json"
        path.write_text(json.dumps(template))
        result = subprocess.run([CFN_LINT, str(path)], capture_output=True, text=True, timeout=300)
        assert result.returncode & 2 == 0, result.stdout


def test_snapshots(app_case, snapshot):
    _, _, _, _, after = app_case
    assert after == snapshot


def test_skipped_and_unreachable_launches_warn_with_the_reason():
    module = importlib.import_module("tests.apps.l1_raw")
    app = cdk.App()
    (stack,) = module.build(app)
    AuditBacklog.apply_to(app)
    annotations = assertions.Annotations.from_stack(stack)
    warnings = [
        w.entry.data
        for w in annotations.find_warning("*", assertions.Match.string_like_regexp("cdk-audit-backlog"))
    ]
    text = "\n".join(map(str, warnings))
    assert "Raw/FromParameter is not tuned: user data is a token the library cannot see into" in text
    assert "Raw/ImportedGroup/ASG is not tuned: its launch template is imported" in text


def test_ecs_lines_keep_working():
    module = importlib.import_module("tests.apps.ecs")
    _, after = synth(module, tuned=True)
    al2 = next(launch for launch in launches(after["Ecs"]) if launch.logical_id.startswith("ClusterAl2"))
    body = strip_block(al2.user_data)
    assert "ECS_CLUSTER=" in body and body.index("ECS_CLUSTER=") > 0
    assert al2.user_data.index(END) < al2.user_data.index("ECS_CLUSTER=")


def test_cfn_init_and_signal_still_run_after_the_block():
    module = importlib.import_module("tests.apps.user_data_kinds")
    _, after = synth(module, tuned=True)
    with_init = next(
        launch for launch in launches(after["Kinds"]) if launch.logical_id.startswith("WithInit")
    )
    text = with_init.user_data
    assert text.index(END) < text.index("cfn-init") < text.index("cfn-signal")


def _stage_templates(app):
    app.synth()
    out = {}
    for c in app.node.find_all():
        if isinstance(c, cdk.Stack):
            out[c.node.path] = assertions.Template.from_stack(c).to_json()
    return out


def test_apply_to_reaches_stages_and_nested_stacks():
    module = importlib.import_module("tests.apps.stages")
    app = cdk.App()
    module.build(app)
    AuditBacklog.apply_to(app)
    templates = _stage_templates(app)
    tuned = {
        path: [launch.tuning.target for launch in launches(t)] for path, t in templates.items() if launches(t)
    }
    assert tuned == {
        "Beta/Service": [1024],
        "Beta/Service/Nested": [8192],
        "Pipeline/Prod/Service": [16384],
        "Pipeline/Prod/Service/Nested": [8192],
    }


def test_plain_app_aspect_warns_that_stages_are_not_reached():
    module = importlib.import_module("tests.apps.stages")
    app = cdk.App()
    module.build(app)
    Aspects.of(app).add(AuditBacklog())
    templates = _stage_templates(app)
    assert all(launch.tuning is None for t in templates.values() for launch in launches(t))
    pipeline = next(c for c in app.node.children if isinstance(c, cdk.Stack))
    warnings = assertions.Annotations.from_stack(pipeline).find_warning(
        "*", assertions.Match.string_like_regexp("NOT tuned"))
    assert warnings and "AuditBacklog.apply_to(app)" in str(warnings[0].entry.data)


def test_exclude_predicate_leaves_a_launch_alone_and_says_so():
    module = importlib.import_module("tests.apps.mixed_instances")
    app = cdk.App()
    (stack,) = module.build(app)
    AuditBacklog.apply_to(app, exclude=lambda r: r.node.path.startswith("Mixed/LtReq"))
    template = assertions.Template.from_stack(stack).to_json()
    by_id = {launch.logical_id: launch for launch in launches(template)}
    req = next(l for k, l in by_id.items() if k.startswith("LtReq"))  # noqa
    assert req.tuning is None and req.metadata == {"skipped": "excluded by the aspect's exclude predicate"}
    other = next(launch for k, launch in by_id.items() if k.startswith("Lt") and not k.startswith("LtReq"))
    # t3.medium, m5.xlarge and c5.2xlarge map to different limits: auto, with the limits per type.
    assert other.tuning.is_mixed and other.metadata["limit"] == "auto"
    assert other.per_type == {"t3.medium": 4096, "c5.2xlarge": 16384, "m5.xlarge": 16384}
    assert other.limit_for("t3.medium") == 4096 and other.limit_for("zz9.plural") is None
