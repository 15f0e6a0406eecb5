"""cdk_audit_backlog.testing: decoding templates the way users' snapshot tests need it.

The decoder is checked against text built here (Base64, Fn::Join splits, MIME archives made with
Python's ``email`` package) and against templates the real aspect synthesized.
"""

import ast
import base64
import json
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from aws_cdk import App, Aspects, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template
from hypothesis import given, settings
from hypothesis import strategies as st

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.policy import BacklogPolicy
from cdk_audit_backlog.testing import (
    BLOCK_BEGIN,
    BLOCK_END,
    Block,
    Launch,
    MalformedBlock,
    Tuning,
    blocks,
    decode_user_data,
    is_mime,
    launches,
    shell_parts,
    tuning_of,
)
from cdk_audit_backlog.user_data import BlockInputs, render_block

TESTING_PY = Path(__file__).resolve().parents[1] / "constructs" / "cdk_audit_backlog" / "testing.py"

# Script text as users write it: printable characters, tabs, newlines, some non-ASCII.
script_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029")
    | st.sampled_from("\n\t"),
    max_size=300,
)


# -- the reader shares no code with the writer ----------------------------------------------------


def test_testing_module_imports_nothing_from_the_code_that_writes_the_block():
    tree = ast.parse(TESTING_PY.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update((0, a.name) for a in node.names)
    relative = {module for level, module in imported if level > 0}
    absolute = {module for level, module in imported if level == 0}
    assert not relative, f"testing.py imports package modules: {relative}"
    assert not any(m.startswith("cdk_audit_backlog") for m in absolute), absolute


# -- decode_user_data -----------------------------------------------------------------------------


@settings(deadline=None)
@given(script_text)
def test_literal_base64_round_trips(text):
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    assert decode_user_data(encoded) == text


@settings(deadline=None)
@given(script_text)
def test_fn_base64_of_a_literal_is_the_literal(text):
    assert decode_user_data({"Fn::Base64": text}) == text


@settings(deadline=None)
@given(script_text, st.data())
def test_fn_join_with_an_empty_delimiter_reassembles_any_split(text, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    assert decode_user_data({"Fn::Base64": {"Fn::Join": ["", pieces]}}) == text


@settings(deadline=None)
@given(st.lists(script_text, max_size=6), st.sampled_from(["", "\n", " ", ",", "\n\n"]))
def test_fn_join_puts_the_delimiter_between_parts(parts, delimiter):
    expected = delimiter.join(parts)
    assert decode_user_data({"Fn::Base64": {"Fn::Join": [delimiter, parts]}}) == expected


@settings(deadline=None)
@given(
    st.lists(
        st.one_of(script_text.filter(lambda s: "${" not in s), st.sampled_from(["REF", "GETATT", "REGION"])),
        max_size=8,
    )
)
def test_tokens_become_stable_placeholders_in_order(items):
    tokens = {
        "REF": ({"Ref": "MyQueue4C5D6E7F"}, "${Ref:MyQueue4C5D6E7F}"),
        "GETATT": ({"Fn::GetAtt": ["MyQueue4C5D6E7F", "Arn"]}, "${Fn::GetAtt:MyQueue4C5D6E7F.Arn}"),
        "REGION": ({"Ref": "AWS::Region"}, "${AWS::Region}"),
    }
    parts = [tokens[i][0] if i in tokens else i for i in items]
    expected = "".join(tokens[i][1] if i in tokens else i for i in items)
    assert decode_user_data({"Fn::Base64": {"Fn::Join": ["", parts]}}) == expected


def test_nested_join_and_other_intrinsics():
    value = {
        "Fn::Base64": {
            "Fn::Join": [
                "",
                [
                    "#!/bin/bash\nexport A=",
                    {"Fn::Join": ["-", ["x", {"Ref": "AWS::StackName"}]]},
                    "\nexport B=",
                    {"Fn::ImportValue": "shared-vpc"},
                    "\nexport C=",
                    {"Fn::GetAtt": "Bucket.Arn"},
                    "\n",
                ],
            ]
        }
    }
    assert decode_user_data(value) == (
        "#!/bin/bash\nexport A=x-${AWS::StackName}\nexport B=${Fn::ImportValue:\"shared-vpc\"}\n"
        "export C=${Fn::GetAtt:Bucket.Arn}\n"
    )


def test_fn_sub_substitutes_literal_variables_and_renders_the_rest_as_placeholders():
    value = {
        "Fn::Base64": {
            "Fn::Sub": [
                "#!/bin/bash\necho ${Greeting} ${Queue} ${Bucket.Arn} ${AWS::Region} ${!HOME} ${Name}\n",
                {"Greeting": "hello", "Name": {"Ref": "Param"}},
            ]
        }
    }
    assert decode_user_data(value) == (
        "#!/bin/bash\necho hello ${Ref:Queue} ${Fn::GetAtt:Bucket.Arn} ${AWS::Region} ${HOME} ${Ref:Param}\n"
    )
    assert decode_user_data({"Fn::Base64": {"Fn::Sub": "#!/bin/sh\necho ${AWS::AccountId}"}}) == (
        "#!/bin/sh\necho ${AWS::AccountId}"
    )


def test_a_bare_parameter_reference_is_a_placeholder():
    assert decode_user_data({"Ref": "UserDataParam"}) == "${Ref:UserDataParam}"


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"\xff\xfe\xfa").decode()])
def test_a_literal_that_is_not_base64_of_utf8_is_an_error(bad):
    with pytest.raises(ValueError, match="Base64"):
        decode_user_data(bad)


# -- MIME -----------------------------------------------------------------------------------------


def _mime(parts):
    archive = MIMEMultipart(boundary="==test-boundary==")
    for subtype, text, charset in parts:
        archive.attach(MIMEText(text, subtype, charset))
    return archive.as_string()


ascii_script = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\n"), max_size=200
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["x-shellscript", "cloud-config", "plain"]),
            st.one_of(ascii_script, script_text),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_shell_parts_returns_every_shell_part_in_order_whatever_the_transfer_encoding(parts):
    # utf-8 makes email use Base64; us-ascii keeps 7bit text. Both must decode to the script.
    built = [(sub, text, "us-ascii" if text.isascii() else "utf-8") for sub, text in parts]
    user_data = _mime(built)
    assert is_mime(user_data)
    assert shell_parts(user_data) == [text for sub, text, _ in built if sub == "x-shellscript"]


@settings(deadline=None)
@given(
    script_text.filter(
        lambda s: not s.lower().lstrip("\ufeff").startswith(("content-type:", "mime-version:"))
    )
)
def test_a_plain_script_is_its_own_single_shell_part(text):
    assert shell_parts(text) == [text]


# -- the block ------------------------------------------------------------------------------------

block_inputs = st.builds(
    BlockInputs,
    target=st.one_of(st.none(), st.integers(1, 2**31 - 1)),
    source=st.one_of(
        st.just("unknown"),
        st.builds(
            lambda t, m: f"{t}/{m}MiB",
            st.sampled_from(["m5.large", "t3.micro", "x2iedn.32xlarge"]),
            st.integers(1, 4_000_000),
        ),
    ),
)


@settings(max_examples=40, deadline=None)
@given(block_inputs, script_text)
def test_tuning_reads_back_what_the_renderer_was_given(inputs, user_lines):
    text = "#!/bin/bash\n" + render_block(inputs) + user_lines
    assert tuning_of(text) == Tuning(target=inputs.target, source=inputs.source, count=1)


@settings(max_examples=20, deadline=None)
@given(block_inputs, block_inputs)
def test_two_blocks_are_counted_and_the_first_one_is_reported(first, second):
    text = "#!/bin/bash\n" + render_block(first) + render_block(second) + "echo user\n"
    assert tuning_of(text) == Tuning(target=first.target, source=first.source, count=2)


def test_a_block_inside_a_base64_mime_shell_part_is_found_and_one_in_cloud_config_is_not():
    block = render_block(BlockInputs(target=4096, source="m5.large/8192MiB"))
    user_data = _mime(
        [
            ("x-shellscript", "#!/bin/bash\n" + block + "echo é\n", "utf-8"),
            ("cloud-config", "#cloud-config\n" + render_block(BlockInputs(target=77)), "us-ascii"),
        ]
    )
    assert "CAB_TARGET=4096" not in user_data  # Base64 transfer encoding hides it from a plain search
    assert tuning_of(user_data) == Tuning(target=4096, source="m5.large/8192MiB", count=1)


def test_no_block_means_no_tuning_and_a_marker_in_a_comment_is_not_a_block():
    assert tuning_of("#!/bin/bash\necho '# >>> cdk-audit-backlog >>>'\n") is None


def test_blocks_say_whether_their_end_marker_came():
    closed = f"{BLOCK_BEGIN}\nCAB_TARGET=8192\nCAB_TARGET=1\n{BLOCK_END}\n"
    text = (
        "#!/bin/bash\n"
        + closed
        + f"echo user\n{BLOCK_BEGIN}\nCAB_TARGET=auto\n{BLOCK_BEGIN}\nCAB_SOURCE=mixed\n"
    )
    assert blocks(text) == [
        Block({"CAB_TARGET": "8192"}, closed=True),  # the first assignment of each name
        Block({"CAB_TARGET": "auto"}, closed=False),  # the next begin marker starts another block
        Block({"CAB_SOURCE": "mixed"}, closed=False),  # the script ends first
    ]
    assert blocks(f"#!/bin/bash\n{BLOCK_END}\necho user\n") == []


@pytest.mark.parametrize("line", ["CAB_TARGET=lots", "CAB_TARGET=", "CAB_TARGET=-5", "CAB_TARGET=0", None])
def test_an_unreadable_target_is_reported_as_malformed(line):
    body = "" if line is None else line + "\n"
    text = (
        "#!/bin/bash\n# >>> cdk-audit-backlog >>>\n"
        + body
        + "CAB_SOURCE=unknown\n# <<< cdk-audit-backlog <<<\n"
    )
    with pytest.raises(MalformedBlock):
        tuning_of(text)


# -- launches() on hand-written and synthesized templates -----------------------------------------


def test_launches_lists_every_launch_type_with_user_data_and_metadata():
    block = render_block(BlockInputs(target=1024, source="t3.micro/1024MiB"))
    template = {
        "Resources": {
            "Bucket": {"Type": "AWS::S3::Bucket"},
            "Inst": {
                "Type": "AWS::EC2::Instance",
                "Properties": {
                    "InstanceType": "t3.micro",
                    "UserData": {"Fn::Base64": "#!/bin/bash\n" + block},
                },
                "Metadata": {
                    "cdk-audit-backlog": {
                        "limit": 1024,
                        "instanceType": "t3.micro",
                        "memoryMiB": 1024,
                        "reason": "r",
                    }
                },
            },
            "Lt": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {}}},
            "Lc": {
                "Type": "AWS::AutoScaling::LaunchConfiguration",
                "Properties": {"UserData": base64.b64encode(b"<powershell>\n</powershell>").decode()},
                "Metadata": {"cdk-audit-backlog": {"skipped": "Windows"}},
            },
        }
    }
    found = launches(template)
    assert [(launch.logical_id, launch.resource_type) for launch in found] == [
        ("Inst", "AWS::EC2::Instance"),
        ("Lt", "AWS::EC2::LaunchTemplate"),
        ("Lc", "AWS::AutoScaling::LaunchConfiguration"),
    ]
    inst, lt, lc = found
    assert inst.tuning == Tuning(1024, "t3.micro/1024MiB", 1)
    assert inst.metadata["limit"] == 1024 and inst.skipped is None
    assert lt == Launch("Lt", "AWS::EC2::LaunchTemplate", None, None, None)
    assert lc.user_data == "<powershell>\n</powershell>" and lc.tuning is None and lc.skipped == "Windows"


def _tiny_app_stack(tuned: bool) -> Stack:
    app = App(builtin_cloud_formation_validation=False)
    stack = Stack(app, "Tiny")
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        nat_gateways=0,
        max_azs=1,
        subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
    )
    user_data = ec2.UserData.for_linux()
    user_data.add_commands("echo first", "echo second")
    ec2.Instance(
        stack,
        "Web",
        vpc=vpc,
        instance_type=ec2.InstanceType("m5.large"),
        machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"}),
        user_data=user_data,
    )
    autoscaling.AutoScalingGroup(
        stack,
        "Workers",
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
        machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"}),
    )
    if tuned:
        Aspects.of(app).add(AuditBacklog())
    return stack


def test_launches_reads_a_tuned_app_from_a_template_a_dict_and_a_file(tmp_path):
    template = Template.from_stack(_tiny_app_stack(tuned=True))
    path = tmp_path / "Tiny.template.json"
    path.write_text(json.dumps(template.to_json()))
    from_template, from_dict, from_file = (
        launches(template),
        launches(template.to_json()),
        launches(str(path)),
    )
    assert from_template == from_dict == from_file
    by_type = {launch.resource_type: launch for launch in from_template}
    web = by_type["AWS::EC2::Instance"]
    expected = BacklogPolicy().limit_for_memory(8192)
    assert web.tuning == Tuning(target=expected, source="m5.large/8192MiB", count=1)
    assert web.metadata["limit"] == expected
    assert web.user_data.startswith("#!/bin/bash\n# >>> cdk-audit-backlog >>>\n")
    assert web.user_data.endswith("# <<< cdk-audit-backlog <<<\necho first\necho second")
    workers = next(launch for launch in from_template if launch.logical_id.startswith("Workers"))
    assert workers.tuning is not None and workers.tuning.count == 1


def test_launches_of_an_untuned_app_find_no_tuning():
    found = launches(Template.from_stack(_tiny_app_stack(tuned=False)))
    assert found and all(launch.tuning is None and launch.metadata is None for launch in found)


def test_readme_example_snapshot(snapshot):
    """The README's example: what a user's snapshot test records for each launch."""
    template = Template.from_stack(_tiny_app_stack(tuned=True))
    summary = [
        {
            "resource": launch.resource_type,
            "limit": None if launch.tuning is None else (launch.tuning.target or "auto"),
            "source": None if launch.tuning is None else launch.tuning.source,
            "blocks": 0 if launch.tuning is None else launch.tuning.count,
        }
        for launch in launches(template)
    ]
    assert summary == snapshot


# -- Fn::Sub and line endings ---------------------------------------------------------------------

sub_name = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True)


@settings(deadline=None)
@given(
    st.lists(
        st.one_of(
            script_text.filter(lambda s: "${" not in s and "$" not in s), sub_name.map(lambda n: ("VAR", n))
        ),
        max_size=8,
    ),
    st.dictionaries(sub_name, script_text.filter(lambda s: "${" not in s), max_size=5),
)
def test_fn_sub_renders_each_variable_from_its_literal_value_or_as_a_reference(items, variables):
    template = "".join(i if isinstance(i, str) else "${" + i[1] + "}" for i in items)
    expected = "".join(
        i if isinstance(i, str) else (variables[i[1]] if i[1] in variables else "${Ref:" + i[1] + "}")
        for i in items
    )
    assert decode_user_data({"Fn::Base64": {"Fn::Sub": [template, variables]}}) == expected


def test_a_block_in_a_crlf_mime_archive_is_found():
    block = render_block(BlockInputs(target=2048, source="t3.small/2048MiB"))
    archive = (
        'Content-Type: multipart/mixed; boundary="b"\r\nMIME-Version: 1.0\r\n\r\n'
        '--b\r\nContent-Type: text/x-shellscript; charset="us-ascii"\r\n\r\n'
        + "#!/bin/bash\r\n" + block.replace("\n", "\r\n") + "echo hi\r\n"
        "--b--\r\n"
    )
    assert is_mime(archive)
    assert tuning_of(archive) == Tuning(target=2048, source="t3.small/2048MiB", count=1)


def test_importing_the_helper_does_not_start_the_cdk():
    # The operator CLI (`report`) decodes templates through this module and must start without Node.
    import subprocess
    import sys

    code = "import sys, cdk_audit_backlog.testing; print('aws_cdk' in sys.modules, 'jsii' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- writer and reader, two implementations, must agree -------------------------------------------

shebangs = st.sampled_from(["#!/bin/bash", "#!/bin/sh", "#!/usr/bin/env bash", "#!/bin/bash -e"])


def _joined(text, cuts, tokens):
    """``text`` as CDK renders it with tokens: an Fn::Join of literal pieces with Refs after some of them."""
    bounds = sorted(set(cuts))
    pieces = [text[a:b] for a, b in zip([0] + bounds, bounds + [len(text)])]
    parts, expected = [], []
    for i, piece in enumerate(pieces):
        parts.append(piece)
        expected.append(piece)
        if i in tokens:
            parts.append({"Ref": f"Param{i}"})
            expected.append("${Ref:Param%d}" % i)
    return {"Fn::Base64": {"Fn::Join": ["", parts]}}, "".join(expected)


@settings(max_examples=60, deadline=None)
@given(shebangs, script_text.filter(lambda s: "${" not in s), block_inputs, st.data())
def test_what_splice_writes_the_decoder_reads_back(shebang, body, inputs, data):
    from cdk_audit_backlog.splice import splice_user_data

    text = shebang + "\n" + body
    # Tokens only after the shebang line: splice needs to read the header as literal text.
    cuts = data.draw(st.lists(st.integers(len(shebang) + 1, len(text)), max_size=4))
    tokens = set(data.draw(st.lists(st.integers(1, 4), max_size=3)))
    value, expected_user = _joined(text, cuts, tokens)
    assert decode_user_data(value) == expected_user

    block = render_block(inputs)
    tuned = decode_user_data(splice_user_data(value, block))
    assert tuning_of(tuned) == Tuning(target=inputs.target, source=inputs.source, count=1)
    start = tuned.index("# >>> cdk-audit-backlog >>>")
    end = tuned.index("# <<< cdk-audit-backlog <<<\n") + len("# <<< cdk-audit-backlog <<<\n")
    assert tuned[start:end] == block
    assert tuned[:start] + tuned[end:] == expected_user  # the user's bytes, in order, tokens in place


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["x-shellscript", "cloud-config"]), ascii_script), min_size=1, max_size=4
    ),
    block_inputs,
)
def test_splice_adds_one_shell_part_to_a_mime_archive_and_the_reader_finds_it(parts, inputs):
    from cdk_audit_backlog.splice import splice_user_data

    archive = _mime([(sub, text, "us-ascii") for sub, text in parts])
    tuned = decode_user_data(splice_user_data({"Fn::Base64": archive}, render_block(inputs)))
    assert tuning_of(tuned) == Tuning(target=inputs.target, source=inputs.source, count=1)
    user_scripts = [text for sub, text in parts if sub == "x-shellscript"]
    assert shell_parts(tuned)[1:] == user_scripts  # our part first, the user's after, unchanged


# -- mixed groups: auto blocks with per-type limits in the Metadata ---------------------------------


def _mixed_template(per_type, target=None, source="mixed"):
    text = "#!/bin/bash\n" + render_block(BlockInputs(target=target, source=source)) + "echo hi\n"
    metadata = {"limit": "auto" if target is None else target, "reason": "r"}
    if per_type is not None:
        metadata["perType"] = per_type
    return {
        "Resources": {
            "Lt": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Metadata": {"cdk-audit-backlog": metadata},
                "Properties": {"LaunchTemplateData": {"UserData": {"Fn::Base64": text}}},
            }
        }
    }


def test_a_mixed_launch_exposes_the_limit_of_each_type():
    (launch,) = launches(_mixed_template({"m5.large": 8192, "r5.4xlarge": 131072}))
    assert launch.tuning.is_auto and launch.tuning.is_mixed and launch.tuning.source == "mixed"
    assert launch.per_type == {"m5.large": 8192, "r5.4xlarge": 131072}
    assert launch.limit_for("r5.4xlarge") == 131072 and launch.limit_for("m5.large") == 8192
    assert launch.limit_for("t3.micro") is None  # not a type of the group: computed at boot, unknown here


def test_a_fixed_block_gives_its_limit_for_every_type_and_no_per_type_map():
    (launch,) = launches(_mixed_template(None, target=8192, source="m5.large/8192MiB"))
    assert not launch.tuning.is_mixed and launch.per_type == {}
    assert launch.limit_for("m5.large") == 8192 and launch.limit_for("t3.large") == 8192


def test_per_type_ignores_what_is_not_a_limit():
    (launch,) = launches(_mixed_template({"m5.large": 8192, "x": "8192", "y": True, "z": None}))
    assert launch.per_type == {"m5.large": 8192}
    (launch,) = launches(_mixed_template("not a map"))
    assert launch.per_type == {}


def test_the_aspect_and_the_reader_agree_on_a_mixed_group():
    app = App()
    stack = Stack(app, "S")
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    lt = ec2.LaunchTemplate(stack, "Lt", machine_image=ec2.MachineImage.latest_amazon_linux2023())
    autoscaling.AutoScalingGroup(
        stack, "G", vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                for t in ("m5.large", "r5.4xlarge")
            ],
        ),
    )
    AuditBacklog.apply_to(app)
    (launch,) = [
        each
        for each in launches(Template.from_stack(stack))
        if each.resource_type == "AWS::EC2::LaunchTemplate"
    ]
    assert launch.tuning.is_mixed and launch.tuning.count == 1
    assert launch.per_type == {"m5.large": 8192, "r5.4xlarge": 131072}
