"""splice.py: the block goes in, the user's bytes stay, the kinds we cannot handle are refused."""

import base64
import email
import subprocess

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cdk_audit_backlog.splice import MIME_BOUNDARY, Unsupported, literal_bytes, literal_text, splice_user_data

BLOCK = "# >>> cdk-audit-backlog >>>\necho tuned\n# <<< cdk-audit-backlog <<<\n"


def _text(value):
    text = literal_text(value)
    assert text is not None
    return text


def _without_block(text: str) -> str:
    start = text.index("# >>> cdk-audit-backlog >>>")
    end = text.index("# <<< cdk-audit-backlog <<<\n") + len("# <<< cdk-audit-backlog <<<\n")
    return text[:start] + text[end:]


def test_block_goes_right_after_the_shebang():
    out = _text(splice_user_data({"Fn::Base64": "#!/bin/bash\necho one\necho two"}, BLOCK))
    assert out.startswith("#!/bin/bash\n# >>> cdk-audit-backlog >>>\n")
    assert out.endswith("# <<< cdk-audit-backlog <<<\necho one\necho two")


def test_shebang_only_user_data_gets_a_newline_then_the_block():
    out = _text(splice_user_data({"Fn::Base64": "#!/bin/bash"}, BLOCK))
    assert out == "#!/bin/bash\n" + BLOCK


def test_missing_user_data_becomes_a_bash_script():
    assert _text(splice_user_data(None, BLOCK)) == "#!/bin/bash\n" + BLOCK


def test_missing_user_data_for_eks_becomes_mime():
    out = _text(splice_user_data(None, BLOCK, require_mime=True))
    msg = email.message_from_string(out)
    assert msg.is_multipart()
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript"]
    assert parts[0].get_payload() == "#!/bin/bash\n" + BLOCK


def test_tokens_after_the_shebang_line_stay_in_place():
    value = {
        "Fn::Base64": {
            "Fn::Join": [
                "",
                ["#!/bin/bash\necho ECS_CLUSTER=", {"Ref": "Cluster"}, " >> /etc/ecs/ecs.config"],
            ]
        }
    }
    out = splice_user_data(value, BLOCK)
    parts = out["Fn::Base64"]["Fn::Join"][1]
    assert parts[0] == "#!/bin/bash\n" + BLOCK + "echo ECS_CLUSTER="
    assert parts[1:] == [{"Ref": "Cluster"}, " >> /etc/ecs/ecs.config"]


def test_fn_sub_keeps_its_variables_and_escapes_nothing_of_ours():
    value = {"Fn::Base64": {"Fn::Sub": ["#!/bin/bash\necho ${Name}", {"Name": {"Ref": "P"}}]}}
    out = splice_user_data(value, BLOCK + "echo ${CAB_ROOT:-}\n")
    parts = out["Fn::Base64"]["Fn::Join"][1]
    # Our ${...} is literal text outside the Fn::Sub, so CloudFormation substitutes nothing in it.
    assert parts[0].startswith("#!/bin/bash\n# >>>") and "${CAB_ROOT:-}" in parts[0]
    assert parts[1] == {"Fn::Sub": ["echo ${Name}", {"Name": {"Ref": "P"}}]}


def test_literal_base64_user_data_stays_literal_base64():
    raw = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    out = splice_user_data(raw, BLOCK)
    assert isinstance(out, str)
    assert base64.b64decode(out).decode() == "#!/bin/sh\n" + BLOCK + "echo hi\n"


def test_mime_gets_our_part_first_and_keeps_every_part():
    original = (
        'Content-Type: multipart/mixed; boundary="//"\nMIME-Version: 1.0\n\n'
        '--//\nContent-Type: text/x-shellscript; charset="us-ascii"\n\n#!/bin/bash\n/etc/eks/bootstrap.sh c\n'
        '--//\nContent-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\n'
        "--//--\n"
    )
    out = _text(splice_user_data({"Fn::Base64": original}, BLOCK))
    parts = email.message_from_string(out).get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/x-shellscript",
        "text/x-shellscript",
        "application/node.eks.aws",
    ]
    assert parts[0].get_payload() == "#!/bin/bash\n" + BLOCK
    original_parts = email.message_from_string(original).get_payload()
    assert [p.as_string() for p in parts[1:]] == [p.as_string() for p in original_parts]
    # The original archive is intact after our part.
    assert out.endswith(original[original.index("--//"):])


def test_cloud_config_is_wrapped_and_stays_valid_yaml():
    original = "#cloud-config\npackages:\n  - htop\nruncmd:\n  - [echo, hi]\n"
    out = _text(splice_user_data({"Fn::Base64": original}, BLOCK))
    parts = email.message_from_string(out).get_payload()
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript", "text/cloud-config"]
    assert parts[1].get_payload() == original
    assert yaml.safe_load(parts[1].get_payload())["packages"] == ["htop"]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<powershell>\nWrite-Host hi\n</powershell>", "Windows"),
        ("[settings.ecs]\ncluster = \"c\"\n", "Bottlerocket"),
        ("#!/usr/bin/env python3\nprint(1)\n", "python3"),
        ("echo no shebang\n", "no '#!'"),
        ("#cloud-boothook\necho early\n", "#cloud-boothook"),
        ("#!/bin/bash\n" + BLOCK, "already carries"),
    ],
)
def test_unsupported_kinds_are_refused_with_a_reason(text, reason):
    with pytest.raises(Unsupported, match=reason):
        splice_user_data({"Fn::Base64": text}, BLOCK)


def test_user_data_behind_a_token_is_refused():
    with pytest.raises(Unsupported, match="token"):
        splice_user_data({"Fn::Base64": {"Ref": "UserDataParam"}}, BLOCK)
    with pytest.raises(Unsupported, match="token"):
        splice_user_data({"Ref": "UserDataParam"}, BLOCK)


def test_literal_bytes_counts_utf8_and_skips_tokens():
    assert literal_bytes({"Fn::Base64": {"Fn::Join": ["", ["é", {"Ref": "X"}, "ab"]]}}) == 4


_lines = st.lists(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    lines=_lines,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
    shebang=st.sampled_from(["#!/bin/bash", "#!/bin/sh -e", "#!/usr/bin/env bash"]),
)
def test_user_bytes_survive_any_join_split(lines, cuts, shebang):
    """Whatever way CDK splits the script into Fn::Join parts, removing the block gives the original back."""
    text = shebang + "\n" + "\n".join(lines)
    points = sorted({c for c in cuts if len(shebang) + 1 <= c < len(text)})
    parts, last = [], 0
    for p in points:
        parts.append(text[last:p])
        last = p
    parts.append(text[last:])
    out = splice_user_data({"Fn::Base64": {"Fn::Join": ["", parts]}}, BLOCK)
    decoded = (
        out["Fn::Base64"] if isinstance(out["Fn::Base64"], str) else "".join(out["Fn::Base64"]["Fn::Join"][1])
    )
    assert decoded.startswith(shebang + "\n" + BLOCK)
    assert _without_block(decoded) == text


def test_spliced_shell_passes_bash_n():
    out = _text(splice_user_data({"Fn::Base64": "#!/bin/bash\nset -e\nif true; then echo ok; fi\n"}, BLOCK))
    subprocess.run(["bash", "-n"], input=out, text=True, check=True)
    assert MIME_BOUNDARY not in out
