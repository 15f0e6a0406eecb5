"""Bottlerocket: our two settings merged into the user's TOML, every user line kept in order."""

import re
import tomllib
from difflib import SequenceMatcher

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Annotations, Match, Template
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.bottlerocket import (
    NotToml,
    is_bottlerocket_toml,
    is_bottlerocket_user_data,
    merge_settings,
    merge_user_data,
    settings_toml,
)
from cdk_audit_backlog.testing import launches

KEY_LINE = re.compile(r"""(?:audit_backlog_limit|reboot-to-reconcile)["']?\s*=""")
VALUE_SWAP = re.compile(
    r"""^(.*?(?:audit_backlog_limit|reboot-to-reconcile)["']?\s*=\s*)(\[[^\]]*\]|true|false)(.*)$"""
)
OUR_HEADERS = {"[settings.boot]", "[settings.boot.kernel-parameters]"}


def _subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(c in it for c in small)


def assert_only_additions(before: str, after: str, limit: int) -> None:
    """``after`` is ``before`` with lines (or inline-table items) added and our keys' values replaced."""
    new_values = ("true", f'["{limit}"]')

    def changed_ok(old: str, new: str) -> bool:
        if _subsequence(old, new):  # an item inserted into an inline table on this line
            return True
        m = VALUE_SWAP.match(old)
        return bool(m) and any(new == m.group(1) + v + m.group(3) for v in new_values)

    def ours(line: str) -> bool:
        return not line.strip() or line.strip() in OUR_HEADERS or bool(KEY_LINE.search(line))

    a, b = before.splitlines(), after.splitlines()
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        assert tag in ("insert", "replace"), (tag, a[i1:i2], b[j1:j2])
        matched = set()
        for old in a[i1:i2]:
            hits = [j for j in range(j1, j2) if j not in matched and changed_ok(old, b[j])]
            assert hits, f"user line lost or rewritten: {old!r} -> {b[j1:j2]!r}"
            matched.add(hits[0])
        for j in range(j1, j2):
            assert j in matched or ours(b[j]), f"line that is neither the user's nor ours: {b[j]!r}"


def expected_doc(before: dict, limit: int) -> dict:
    import copy

    doc = copy.deepcopy(before)
    boot = doc.setdefault("settings", {}).setdefault("boot", {})
    if boot.get("reboot-to-reconcile") is not False:
        boot["reboot-to-reconcile"] = True
    params = boot.setdefault("kernel-parameters", {})
    old = params.get("audit_backlog_limit")
    if isinstance(old, list) and len(old) == 1 and str(old[0]).isdigit() and int(old[0]) > limit:
        limit = int(old[0])
    params["audit_backlog_limit"] = [str(limit)]
    return doc


# -- generated TOML ---------------------------------------------------------------------------------

words = st.text("abcdefghij-_", min_size=1, max_size=6)
comment = st.text("abc #=[]{}\"'.xyz_", max_size=20).map(lambda s: "# " + s)
string_value = st.one_of(
    st.text("ab #[]{}=.,", max_size=10).map(lambda s: '"' + s + '"'),
    st.text("ab #[]{}=\".,", max_size=10).map(lambda s: "'" + s + "'"),
    st.just('"esc \\" quote # not a comment"'),
    st.just('"""multi\nline [settings.boot]\nvalue"""'),
)
scalar = st.one_of(string_value, st.integers(-5, 10**6).map(str), st.sampled_from(["true", "false", "1.5"]))
array = st.one_of(
    st.lists(string_value, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(string_value, min_size=1, max_size=3).map(
        lambda xs: "[\n  " + ",\n  # item\n  ".join(xs) + ",\n]"
    ),
)
inline = st.dictionaries(words, scalar, max_size=2).map(
    lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }" if d else "{}"
)
value = st.one_of(scalar, array, inline)
trailing = st.one_of(st.just(""), comment.map(lambda c: "  " + c))
limit_key = st.sampled_from(['"audit_backlog_limit"', "audit_backlog_limit", "'audit_backlog_limit'"])
existing_limit = st.sampled_from([64, 320, 8192, 65536, 10**6]).map(lambda n: f'["{n}"]')
reconcile = st.sampled_from(["true", "false"])
param = st.tuples(st.sampled_from(['"console"', "net.ifnames", '"systemd.log_level"', "quiet"]), array)


@st.composite
def filler(draw):
    """Comment and blank lines between statements."""
    return [draw(st.one_of(comment, st.just("")))for _ in range(draw(st.integers(0, 2)))]


@st.composite
def kvs(draw, keys):
    out = []
    for key in draw(st.lists(keys, max_size=3, unique=True)):
        out += draw(filler())
        out.append(f"{key} = {draw(value)}{draw(trailing)}")
    return out


@st.composite
def boot_shape(draw):
    """(root lines, sections) holding the boot settings in one of the shapes users write."""
    shape = draw(st.integers(0, 5))
    params = draw(st.lists(param, max_size=2, unique_by=lambda p: p[0]))
    limit_line = draw(st.one_of(st.none(), st.tuples(limit_key, existing_limit, trailing)))
    rec = draw(st.one_of(st.none(), reconcile))
    root, sections = [], []
    if shape == 1:  # [settings.boot] with dotted kernel-parameters
        lines = [f"kernel-parameters.{k} = {v}" for k, v in params]
        if limit_line:
            lines.append(f"kernel-parameters.{limit_line[0]} = {limit_line[1]}{limit_line[2]}")
        if rec:
            lines.insert(draw(st.integers(0, len(lines))), f"reboot-to-reconcile = {rec}")
        sections.append(("[settings.boot]", lines))
    elif shape == 2:  # [settings.boot.kernel-parameters], maybe [settings.boot] too
        lines = [f"{k} = {v}" for k, v in params]
        if limit_line:
            lines.insert(
                draw(st.integers(0, len(lines))), f"{limit_line[0]} = {limit_line[1]}{limit_line[2]}"
            )
        sections.append(("[settings.boot.kernel-parameters]", lines))
        if rec:
            sections.append(("[settings.boot]", [f"reboot-to-reconcile = {rec}"]))
    elif shape == 3:  # dotted from the root
        if rec:
            root.append(f"settings.boot.reboot-to-reconcile = {rec}")
        if limit_line:
            root.append(f"settings.boot.kernel-parameters.{limit_line[0]} = {limit_line[1]}{limit_line[2]}")
    elif shape == 4:  # inline table of kernel parameters
        pairs = list(params) + ([limit_line[:2]] if limit_line else [])
        items = ", ".join(f"{k} = {v.replace(chr(10), ' ').replace('# item', '')}" for k, v in pairs)
        lines = [f"kernel-parameters = {{ {items} }}" if items else "kernel-parameters = {}"]
        if rec:
            lines.append(f"reboot-to-reconcile = {rec}")
        sections.append(("[settings.boot]", lines))
    elif shape == 5:  # [settings] with dotted boot keys
        lines = [f"boot.kernel-parameters.{k} = {v}" for k, v in params]
        if rec:
            lines.append(f"boot.reboot-to-reconcile = {rec}")
        if limit_line:
            lines.append(f"boot.kernel-parameters.{limit_line[0]} = {limit_line[1]}{limit_line[2]}")
        sections.append(("[settings]", lines))
    return root, sections


@st.composite
def bottlerocket_toml(draw):
    root, boot_sections = draw(boot_shape())
    others = [
        (h, draw(kvs(words)))
        for h in draw(
            st.lists(
                st.sampled_from(
                    ["[settings.kubernetes]", "[settings.host-containers.admin]", "[settings.ecs]",
                     '[settings.kubernetes.node-labels]', '[settings."quoted.table"]']
                ),
                max_size=3,
                unique=True,
            )
        )
    ]
    sections = draw(st.permutations(boot_sections + others))
    lines = draw(filler())
    if draw(st.booleans()):
        root = root + ["settings.motd = \"hello # [settings.boot]\""]
    for line in root:
        lines.append(line)
        lines += draw(filler())
    for header, body in sections:
        lines.append(header + draw(trailing))
        for line in body:
            lines.append(line)
            lines += draw(filler())
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines) + draw(st.sampled_from(["", newline]))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assume(False)
    assume(doc)
    return text


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(text=bottlerocket_toml(), limit=st.sampled_from([320, 1024, 8192, 262144]))
def test_merge_keeps_every_user_setting_in_order_and_sets_the_parameter_once(text, limit):
    before = tomllib.loads(text)
    merged = merge_settings(text, limit)
    after = tomllib.loads(merged.text)
    assert after == expected_doc(before, limit)
    assert after["settings"]["boot"]["kernel-parameters"]["audit_backlog_limit"] == [str(merged.limit)]
    assert len(re.findall(r"""audit_backlog_limit["']?\s*=""", merged.text)) == 1, merged.text
    assert_only_additions(text, merged.text, merged.limit)
    # Idempotent: a second merge changes nothing.
    assert merge_settings(merged.text, limit).text == merged.text


@settings(max_examples=100, deadline=None)
@given(text=bottlerocket_toml())
def test_generated_settings_read_as_bottlerocket(text):
    assert is_bottlerocket_toml(text)


# -- the shapes one by one --------------------------------------------------------------------------


def test_settings_without_boot_get_a_new_table_at_the_end():
    text = '# my node\n[settings.kubernetes]\napi-server = "https://x" # the API\n'
    merged = merge_settings(text, 8192)
    assert merged.text == (
        text
        + '\n[settings.boot]\nkernel-parameters."audit_backlog_limit" = ["8192"]\n'
        "reboot-to-reconcile = true\n"
    )


def test_existing_kernel_parameters_table_gains_one_line_right_after_its_header():
    text = (
        '[settings.boot.kernel-parameters]\n"console" = ["tty0", "ttyS0"]\n\n'
        "[settings.boot]\nreboot-to-reconcile = true\n"
    )
    merged = merge_settings(text, 1024)
    assert merged.text == (
        '[settings.boot.kernel-parameters]\n"audit_backlog_limit" = ["1024"]\n"console" = ["tty0", "ttyS0"]\n'
        "\n[settings.boot]\nreboot-to-reconcile = true\n"
    )


def test_an_existing_smaller_limit_is_replaced_in_place_keeping_key_spelling_and_comment():
    text = "[settings.boot.kernel-parameters]\naudit_backlog_limit   =  ['320']   # old\n"
    merged = merge_settings(text, 8192)
    assert merged.text.startswith(
        '[settings.boot.kernel-parameters]\naudit_backlog_limit   =  ["8192"]   # old\n'
    )


def test_a_larger_limit_the_user_set_is_kept_unless_allow_lower():
    text = '[settings.boot.kernel-parameters]\n"audit_backlog_limit" = ["65536"]\n'
    kept = merge_settings(text, 8192)
    assert kept.limit == 65536 and '["65536"]' in kept.text and "kept the larger" in kept.notes[0]
    lowered = merge_settings(text, 8192, allow_lower=True)
    assert lowered.limit == 8192 and '["8192"]' in lowered.text and not lowered.notes


def test_reboot_to_reconcile_false_is_the_users_choice_and_kept():
    text = "[settings.boot]\nreboot-to-reconcile = false\n"
    merged = merge_settings(text, 8192)
    assert "reboot-to-reconcile = false" in merged.text and "true" not in merged.text
    assert "next reboot" in merged.notes[0]


def test_inline_kernel_parameters_gain_an_item():
    merged = merge_settings('[settings.boot]\nkernel-parameters = { console = ["x"] }\n', 4096)
    assert 'kernel-parameters = { "audit_backlog_limit" = ["4096"], console = ["x"] }' in merged.text


def test_limit_inside_an_inline_table_is_replaced_there():
    merged = merge_settings(
        '[settings.boot]\nkernel-parameters = { quiet = [], audit_backlog_limit = ["320"] }\n', 4096
    )
    assert 'kernel-parameters = { quiet = [], audit_backlog_limit = ["4096"] }' in merged.text


@pytest.mark.parametrize(
    "text",
    [
        '[settings.boot]\nkernel-parameters = "quiet"\n',
        "[[settings.boot]]\nx = 1\n",
        "[settings\n",
        'a = "x\n',
    ],
)
def test_settings_where_our_keys_cannot_go_are_refused(text):
    with pytest.raises(NotToml):
        merge_settings(text, 1024)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[settings.boot]\nkernel-parameters = "quiet"\n', "settings.boot.kernel-parameters holds a value"),
        ("[[settings.boot]]\nx = 1\n", "settings.boot is an array of tables"),
        ("[settings\n", "line 1"),
    ],
)
def test_refusals_say_where_or_which_key(text, message):
    with pytest.raises(NotToml, match=re.escape(message)):
        merge_settings(text, 1024)


@pytest.mark.parametrize(
    "text",
    [
        '[settings.kubernetes]\r\ncluster-name = "c"\r\n',
        '[settings.boot]\r\nkernel-parameters = { console = ["x"] }\r\n',
        'settings.motd = "x"\r\n[settings.boot]\r\nreboot-to-reconcile = false',
    ],
)
def test_crlf_settings_stay_crlf(text):
    merged = merge_settings(text, 8192).text
    assert "\n" not in merged.replace("\r\n", ""), repr(merged)
    assert tomllib.loads(merged) == expected_doc(tomllib.loads(text), 8192)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'settings.boot.kernel-parameters."audit_backlog_limit" = ["320"]\n\n'
            '[settings.ecs]\ncluster = "c"\n',
            'settings.boot.kernel-parameters."audit_backlog_limit" = ["1024"]\n\n'
            'settings.boot.reboot-to-reconcile = true\n[settings.ecs]\ncluster = "c"\n',
        ),
        (
            '# node\nsettings.boot.kernel-parameters."audit_backlog_limit" = ["320"]\n\n',
            '# node\nsettings.boot.kernel-parameters."audit_backlog_limit" = ["1024"]\n\n'
            "settings.boot.reboot-to-reconcile = true\n",
        ),
    ],
)
def test_root_dotted_keys_gain_a_line_right_before_the_first_table_or_at_the_end(text, expected):
    """Where 0.1.0 put the line (so a deployed launch template keeps its bytes and its nodes do not roll)."""
    assert merge_settings(text, 1024).text == expected


def test_nested_inline_tables_gain_our_keys():
    text = "[settings]\nboot = { kernel-parameters = { quiet = [] } }\n"
    merged = merge_settings(text, 8192).text
    assert tomllib.loads(merged) == expected_doc(tomllib.loads(text), 8192)
    assert merged.count("\n") == 2  # still the one line under [settings]


@pytest.mark.parametrize("bad", [0, -1, 2**31, True, "8192", None])
def test_limit_is_validated(bad):
    with pytest.raises(ValueError, match="limit"):
        merge_settings("[settings.ecs]\n", bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[settings.ecs]\ncluster = 'c'\n", True),
        ("# node\nsettings.motd = 'hi'\n", True),
        ("#!/bin/bash\necho hi\n", False),
        ("#!/bin/bash\n", False),
        ("#cloud-config\n", False),
        ("", False),
        ("[other]\nx = 1\n", False),
        ("Content-Type: multipart/mixed\n", False),
    ],
)
def test_what_reads_as_bottlerocket(text, expected):
    assert is_bottlerocket_toml(text) is expected


def test_settings_toml_alone_parses():
    assert tomllib.loads(settings_toml(2048)) == {
        "settings": {
            "boot": {"kernel-parameters": {"audit_backlog_limit": ["2048"]}, "reboot-to-reconcile": True}
        }
    }


def test_tokens_inside_values_survive_the_merge():
    value = {"Fn::Base64": {"Fn::Join": ["", ['[settings.ecs]\ncluster = "', {"Ref": "Cluster"}, '"\n']]}}
    assert is_bottlerocket_user_data(value)
    merged, result = merge_user_data(value, 8192)
    parts = merged["Fn::Base64"]["Fn::Join"][1]
    assert parts[0] == '[settings.ecs]\ncluster = "' and parts[1] == {"Ref": "Cluster"}
    assert parts[2].startswith('"\n') and '"audit_backlog_limit" = ["8192"]' in parts[2]
    assert result.limit == 8192


# -- the aspect -------------------------------------------------------------------------------------


def _bottlerocket_stack(instance_type="m5.large", user_data='[settings.kubernetes]\ncluster-name = "c"\n'):
    app = cdk.App()
    stack = cdk.Stack(app, "Br", env=cdk.Environment(account="123456789012", region="us-east-1"))
    props = {"user_data": ec2.UserData.custom(user_data)}
    if instance_type:
        props["instance_type"] = ec2.InstanceType(instance_type)
    ec2.LaunchTemplate(stack, "Nodes", **props)
    return app, stack


def test_aspect_skips_bottlerocket_by_default_with_a_warning_naming_the_option():
    app, stack = _bottlerocket_stack()
    AuditBacklog.apply_to(app)
    app.synth()
    Annotations.from_stack(stack).has_warning("*", Match.string_like_regexp(r"bottlerocket=True"))
    (launch,) = launches(Template.from_stack(stack))
    assert "skipped" in launch.metadata and "audit_backlog_limit" not in launch.user_data


def test_aspect_with_bottlerocket_merges_the_limit_of_the_instance_type():
    app, stack = _bottlerocket_stack()
    AuditBacklog.apply_to(app, bottlerocket=True)
    app.synth()
    (launch,) = launches(Template.from_stack(stack))
    doc = tomllib.loads(launch.user_data)
    assert doc["settings"]["kubernetes"] == {"cluster-name": "c"}
    assert doc["settings"]["boot"] == {
        "kernel-parameters": {"audit_backlog_limit": ["8192"]},
        "reboot-to-reconcile": True,
    }
    assert launch.metadata["limit"] == 8192 and "Bottlerocket" in launch.metadata["reason"]
    assert launch.tuning is None  # no shell block: the limit lives in the TOML


def test_aspect_with_bottlerocket_and_no_instance_type_skips_naming_backlog_limit():
    app, stack = _bottlerocket_stack(instance_type=None)
    AuditBacklog.apply_to(app, bottlerocket=True)
    app.synth()
    Annotations.from_stack(stack).has_warning("*", Match.string_like_regexp(r"backlog_limit"))
    app2, stack2 = _bottlerocket_stack(instance_type=None)
    AuditBacklog.apply_to(app2, bottlerocket=True, backlog_limit=4096)
    app2.synth()
    (launch,) = launches(Template.from_stack(stack2))
    assert tomllib.loads(launch.user_data)["settings"]["boot"]["kernel-parameters"] == {
        "audit_backlog_limit": ["4096"]
    }


def test_bottlerocket_option_is_validated():
    with pytest.raises(ValueError, match="bottlerocket"):
        AuditBacklog(bottlerocket="yes")


def test_aspect_with_bottlerocket_gives_a_mixed_group_its_smallest_types_limit():
    """Mixed groups otherwise size per machine at boot ("auto"), which Bottlerocket cannot: the TOML gets the
    limit of the smallest-memory override, so the worst case fits every machine of the group."""
    from aws_cdk import aws_autoscaling as autoscaling

    app = cdk.App()
    stack = cdk.Stack(app, "BrMixed", env=cdk.Environment(account="123456789012", region="us-east-1"))
    network = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)],
    )
    lt = ec2.LaunchTemplate(
        stack,
        "Lt",
        user_data=ec2.UserData.custom('[settings.ecs]\ncluster = "c"\n'),
        machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"}),
    )
    autoscaling.AutoScalingGroup(
        stack, "Group", vpc=network,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.xlarge")),
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("t3.medium")),
            ],
        ),
    )
    AuditBacklog.apply_to(app, bottlerocket=True)
    app.synth()
    (launch,) = [
        each
        for each in launches(Template.from_stack(stack))
        if each.resource_type == "AWS::EC2::LaunchTemplate"
    ]
    assert tomllib.loads(launch.user_data)["settings"]["boot"]["kernel-parameters"] == {
        "audit_backlog_limit": ["4096"]
    }
    assert launch.metadata["limit"] == 4096 and "perType" not in launch.metadata
