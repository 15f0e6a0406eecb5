"""The compact block: the same script with its body gzip-compressed and Base64-encoded (docs/design.md, "The
compact block"). It runs like the plain block on the fixture roots, passes bash -n and shellcheck, is chosen
exactly where the plain block would not fit in EC2's 16,384 bytes, and every reader understands it."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template
from hypothesis import given, settings
from hypothesis import strategies as st

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.block_fit import EC2_USER_DATA_LIMIT, fit_block
from cdk_audit_backlog.check import AuditBacklogCheck
from cdk_audit_backlog.karpenter import karpenter_user_data
from cdk_audit_backlog.testing import blocks, launches, tuning_of
from cdk_audit_backlog.user_data import (
    BLOCK_BEGIN,
    BLOCK_END,
    FEATURES,
    BlockInputs,
    _compact_body,
    render_block,
)
from cdk_audit_backlog.verify import block_is_mixed, block_source, block_target, decode_stored_user_data
from tests.boot import fakes
from tests.boot import fixtures as fx
from tests.test_user_data import ALL_COMBINATIONS, block_script, inputs_for

SHELLCHECK = Path(sys.executable).with_name("shellcheck")
COMPACT_LINE = (
    "/bin/bash -c 'f=$(mktemp)&&{ cat;base64 -d<&3|gzip -dc;}>\"$f\"&&/bin/bash \"$f\";rm -f \"$f\"' "
    "<<'CDK_AUDIT_BACKLOG' 3<<'CDK_AUDIT_BACKLOG' || true"
)
SHEBANG = "#!/bin/bash\n"
# What the aspect writes by default for an m5.large: a known type with the boot unit.
DEFAULT = BlockInputs(target=8192, source="m5.large/8192MiB", boot_unit="auto")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    return fx.make_sandbox(tmp_path_factory.mktemp("sandbox"))


def compact_parts(block: str) -> tuple[list[str], str]:
    """(the plain CAB_* lines, the Base64 payload) of a compact block, read by hand from its shape."""
    lines = block.splitlines()
    assert lines[0] == BLOCK_BEGIN and lines[1] == COMPACT_LINE and lines[-1] == BLOCK_END
    first = lines.index("CDK_AUDIT_BACKLOG")
    assert lines[-2] == "CDK_AUDIT_BACKLOG" and len(lines) == first + 4  # one payload line between them
    return lines[2:first], lines[first + 1]


# -- shape -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("features", ALL_COMBINATIONS, ids=lambda f: "+".join(sorted(f)) or "none")
def test_compact_block_runs_the_very_script_of_the_plain_block(features):
    inputs = inputs_for(features)
    plain, compact = render_block(inputs), render_block(inputs, compact=True)
    assignments, payload = compact_parts(compact)
    assert assignments == inputs.assignments()  # plain text, the same lines in the same order
    decoded = gzip.decompress(base64.b64decode(payload, validate=True)).decode()
    assert "\n".join(assignments) + "\n" + decoded == block_script(plain)
    assert len(compact.encode()) < len(plain.encode())


def test_gzip_is_deterministic_with_a_fixed_header():
    first = render_block(DEFAULT, compact=True)
    _compressed_cache_clear()
    assert render_block(DEFAULT, compact=True) == first
    raw = base64.b64decode(compact_parts(first)[1])
    # magic, deflate, no flags, mtime 0, XFL 2 (maximum compression), OS 255 (unknown: not the build's OS)
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    assert gzip.decompress(raw) == _compact_body(DEFAULT.features()).encode()


def _compressed_cache_clear():
    from cdk_audit_backlog import user_data

    user_data._compressed_body.cache_clear()


@pytest.mark.parametrize(
    "features",
    [frozenset(), frozenset({"auto", "unit"}), frozenset(FEATURES)],
    ids=["none", "auto+unit", "all"],
)
def test_compact_block_passes_bash_n_and_shellcheck(tmp_path, features):
    script = tmp_path / "user-data.sh"
    script.write_text(SHEBANG + render_block(inputs_for(features), compact=True) + "echo user-line\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
    r = subprocess.run([str(SHELLCHECK), "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_compact_size_report():
    """The compact block against the plain one (printed with -s); the savings are the point of the form."""
    rows = {
        "known type, no unit": BlockInputs(target=8192, source="m5.large/8192MiB"),
        "known type, unit (default)": DEFAULT,
        "auto, unit": BlockInputs(source="unknown", boot_unit="auto"),
        "every option (longest inputs)": inputs_for(frozenset(FEATURES)),
    }
    for name, inputs in rows.items():
        plain, compact = (len(render_block(inputs, compact=c).encode()) for c in (False, True))
        room = EC2_USER_DATA_LIMIT - len(SHEBANG) - compact
        print(f"{name:32s} plain {plain:5d}  compact {compact:5d}  saved {plain - compact:5d}  room {room}")
        assert plain - compact >= 600, name
    # the default block leaves at least 12,800 bytes of user script (12,838 measured; plain: 11,092); it was
    # 12,930 before the existing-limit rule read the kernel command line too (92 compressed bytes)
    assert EC2_USER_DATA_LIMIT - len(SHEBANG) - len(render_block(DEFAULT, compact=True)) >= 12800


# -- runs like the plain block -----------------------------------------------------------------------------


def _file_state(root: Path) -> dict:
    """Every file's content and mode (mtimes differ between two runs)."""
    return {rel: (content, mode) for rel, (content, mode, _) in fx.tree_digest(root).items()}


@pytest.mark.parametrize(
    "layout, inputs",
    [
        ("al2", DEFAULT),
        ("debian12", BlockInputs(source="unknown", boot_unit="auto", backlog_wait_time=60000)),
        ("debian13", BlockInputs(target=16384, source="m5.xlarge/16384MiB")),
        ("al1", BlockInputs(target=8192, kernel_cmdline=True, source="m5.large/8192MiB", boot_unit="auto")),
        ("ubuntu2404-no-auditd", BlockInputs(target=4096, install_auditd=True, boot_unit="fixed")),
    ],
)
def test_compact_block_runs_exactly_like_the_plain_one(tmp_path, sandbox, layout, inputs):
    results = {}
    for compact in (False, True):
        root = tmp_path / ("compact" if compact else "plain")
        fx.build(root, layout)
        text = SHEBANG + render_block(inputs, compact=compact) + "echo user-line\n"
        r = fx.run_user_data(root, sandbox, text)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "user-line", r.stdout
        (root / ".fake/user-data").unlink()  # the user data itself differs, by design
        results[compact] = (r.stdout, fx.kernel(root), fx.calls(root), _file_state(root), fakes.boot(root))
    plain, compact = results[False], results[True]
    assert fx.console_lines(plain[0])  # the block did speak
    assert compact[0] == plain[0]  # console lines (and every other line) exactly as readable as today
    assert compact[1] == plain[1]  # the kernel's limit now
    assert compact[2] == plain[2]  # the same commands
    assert compact[3] == plain[3]  # the same files (rules, state, the unit and its script), byte for byte
    assert compact[4] == plain[4]  # the limit the next boot loads


def test_a_damaged_compact_body_runs_nothing_and_the_user_script_goes_on(tmp_path, sandbox):
    root = tmp_path / "al2"
    fx.build(root, "al2")
    block = render_block(DEFAULT, compact=True)
    payload = compact_parts(block)[1]
    damaged = block.replace(payload, payload[: len(payload) // 2])
    r = fx.run_user_data(root, sandbox, SHEBANG + damaged + "echo user-line\n")
    assert r.returncode == 0 and r.stdout.splitlines() == ["user-line"], r.stdout + r.stderr
    assert fx.calls(root) == []  # gzip's check failed before anything ran


def test_user_script_of_the_largest_size_that_fits_still_runs_after_the_compact_block(tmp_path, sandbox):
    """The default block (known type, boot unit) in compact form with the largest user script that fits in
    EC2's 16,384 bytes (12,838 bytes: about 1,750 more than the plain block allows); the user's last line
    runs."""
    block = render_block(DEFAULT, compact=True)
    room = EC2_USER_DATA_LIMIT - len(SHEBANG) - len(block)
    assert room >= 12800
    filler = "# " + "x" * 98 + "\n"
    user = filler * ((room - 20) // len(filler))
    user += "echo user-line\n"
    user += "#" * (room - len(user) - 1) + "\n"
    text = SHEBANG + block + user
    assert len(text.encode()) == EC2_USER_DATA_LIMIT
    assert len((SHEBANG + render_block(DEFAULT) + user).encode()) > EC2_USER_DATA_LIMIT  # plain would not fit
    root = tmp_path / "al2"
    fx.build(root, "al2")
    r = fx.run_user_data(root, sandbox, text)
    assert r.returncode == 0, r.stderr
    assert "backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)" in r.stdout
    assert r.stdout.splitlines()[-1] == "user-line"
    assert fx.kernel(root)["backlog_limit"] == 8192


# -- when -------------------------------------------------------------------------------------------------


PLAIN_LEN = len(render_block(DEFAULT).encode())
COMPACT_LEN = len(render_block(DEFAULT, compact=True).encode())
ROOM_WITH_PLAIN = EC2_USER_DATA_LIMIT - PLAIN_LEN - len(SHEBANG)


@settings(max_examples=60, deadline=None)
@given(user_bytes=st.integers(0, EC2_USER_DATA_LIMIT))
def test_automatic_switch_happens_exactly_at_the_limit(user_bytes):
    value = {"Fn::Base64": SHEBANG + "#" * user_bytes}
    fitted = fit_block(value, DEFAULT, compact_block=None)
    plain_size = len(SHEBANG) + PLAIN_LEN + user_bytes
    assert fitted.compact == (plain_size > EC2_USER_DATA_LIMIT)
    assert fitted.size == (COMPACT_LEN + len(SHEBANG) + user_bytes if fitted.compact else plain_size)
    assert fit_block(value, DEFAULT, compact_block=False).compact is False
    assert fit_block(value, DEFAULT, compact_block=True).compact is True


@pytest.mark.parametrize(
    "user_bytes, compact",
    [(ROOM_WITH_PLAIN, False), (ROOM_WITH_PLAIN + 1, True)],
    ids=["at-the-limit", "one-byte-over"],
)
def test_the_aspect_switches_at_the_limit(user_bytes, compact):
    app, stack, vpc = _stack()
    instance = ec2.Instance(
        stack, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=_image()
    )
    # UserData.for_linux() is "#!/bin/bash\n" then the commands joined by "\n", with no final newline
    instance.user_data.add_commands("#" * user_bytes)
    AuditBacklog.apply_to(app)
    (launch,) = launches(Template.from_stack(stack))
    assert len(launch.user_data.encode()) <= EC2_USER_DATA_LIMIT
    (block,) = blocks(launch.user_data)
    assert block.compact is compact
    assert launch.tuning.target == 8192 and launch.tuning.source == "m5.large/8192MiB"


# -- over the limit even so --------------------------------------------------------------------------------


def _synth_error(**options) -> str:
    app, stack, vpc = _stack()
    instance = ec2.Instance(
        stack, "Big", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=_image()
    )
    instance.user_data.add_commands("echo " + "x" * 14000)
    AuditBacklog.apply_to(app, **options)
    with pytest.raises(Exception) as err:
        app.synth()
    return str(err.value)


def test_over_limit_error_names_every_way_out_with_sizes():
    message = _synth_error(compact_block=False)
    assert "S/Big/Resource" in message and "EC2 accepts at most 16384 bytes" in message
    assert "the compact block (AuditBacklog(compact_block=None or True)): 17" in message
    assert "no boot unit (AuditBacklog(boot_unit=False)): 16" in message and " bytes plain or " in message
    assert "AuditBacklog.skip(scope, reason): 14017 bytes" in message
    assert "shorten the user data by at least" in message


def test_over_limit_error_with_the_automatic_compact_block_names_the_rest():
    message = _synth_error()  # compact already: the plain block is no way out
    assert "compact_block=None or True" not in message
    assert "no boot unit (AuditBacklog(boot_unit=False)): 16" in message and "bytes compact" in message
    assert "AuditBacklog.skip(scope, reason): 14017 bytes" in message


def test_compact_block_option_is_validated_naming_it():
    for bad in (1, "yes", 0):
        with pytest.raises(ValueError, match=r"compact_block must be None .*, True or False, got"):
            AuditBacklog(compact_block=bad)
        with pytest.raises(ValueError, match=r"^karpenter_user_data: compact_block must be"):
            karpenter_user_data("AL2023", compact_block=bad)


# -- readers ----------------------------------------------------------------------------------------------


def test_testing_check_and_verify_read_a_compact_block():
    app, stack, vpc = _stack()
    ec2.Instance(stack, "I", vpc=vpc, instance_type=ec2.InstanceType("m5.large"), machine_image=_image())
    group_lt = ec2.LaunchTemplate(stack, "Lt", machine_image=_image(), user_data=ec2.UserData.for_linux())
    AuditBacklog.apply_to(app, compact_block=True)
    template = Template.from_stack(stack)
    found = launches(template)
    assert len(found) == 2
    for launch in found:
        (block,) = blocks(launch.user_data)
        assert block.compact and block.closed and "cab_main" in block.script
        assert block.script.startswith("CAB_TARGET=")
    by_type = {launch.resource_type: launch for launch in found}
    assert by_type["AWS::EC2::Instance"].tuning.target == 8192
    assert by_type["AWS::EC2::Instance"].tuning.source == "m5.large/8192MiB"
    assert by_type["AWS::EC2::LaunchTemplate"].tuning.is_auto
    assert AuditBacklogCheck().check_template(template.to_json()) == []
    # verify reads user data as EC2 stores it (Base64, possibly gzip as a whole)
    stored = base64.b64encode(by_type["AWS::EC2::Instance"].user_data.encode()).decode()
    text = decode_stored_user_data(stored)
    assert block_target(text) == (True, "8192") and block_source(text) == ("m5.large", 8192)
    assert not block_is_mixed(text)
    gzipped = base64.b64encode(gzip.compress(by_type["AWS::EC2::Instance"].user_data.encode())).decode()
    assert block_target(decode_stored_user_data(gzipped)) == (True, "8192")
    del group_lt


def test_check_treats_a_compact_block_like_a_plain_one():
    block = render_block(BlockInputs(target=1024, source="t3.micro/1024MiB"), compact=True)
    assert _rules(SHEBANG + "echo first\n" + block) == ["BlockNotFirst"]
    assert _rules(SHEBANG + block + block) == ["TunedMoreThanOnce"]
    assert _rules(SHEBANG + block, instance_type="m5.large") == ["BelowPolicy"]
    assert _rules(SHEBANG + block) == []
    payload = compact_parts(block)[1]
    assert _rules(SHEBANG + block.replace(payload, payload[:-40])) == ["MalformedBlock"]
    assert tuning_of(SHEBANG + block).target == 1024


def _rules(user_data: str, instance_type: str = "t3.micro") -> list[str]:
    template = {
        "Resources": {
            "I": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"InstanceType": instance_type, "UserData": {"Fn::Base64": user_data}},
            }
        }
    }
    return [f.rule for f in AuditBacklogCheck().check_template(template)]


def test_karpenter_compact_block_option():
    plain = karpenter_user_data("AL2023")
    compact = karpenter_user_data("AL2023", compact_block=True)
    assert len(compact) < len(plain)
    (block,) = blocks(compact)
    assert block.compact and block.settings["CAB_SOURCE"] == "karpenter"
    (plain_block,) = blocks(plain)
    assert block.script == plain_block.script and not plain_block.compact
    big = "#!/bin/bash\n" + "#" * 14000 + "\n"
    (auto,) = blocks(karpenter_user_data("AL2023", user_data=big))
    assert auto.compact  # the plain block would not fit


def _stack():
    app = cdk.App()
    stack = cdk.Stack(app, "S", env=cdk.Environment(account="111111111111", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    return app, stack, vpc


def _image():
    return ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
