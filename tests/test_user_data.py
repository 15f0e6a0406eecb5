"""The block renderer (cdk_audit_backlog.user_data): shape, optional parts, size, shellcheck, inputs."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_audit_backlog.user_data import (
    BLOCK_BEGIN,
    BLOCK_END,
    FEATURES,
    BlockInputs,
    _compact_body,
    render_block,
    script_text,
)

REPO = Path(__file__).resolve().parents[1]
SHELLCHECK = Path(sys.executable).with_name("shellcheck")
HEREDOC_LINE = "/bin/bash -s <<'CDK_AUDIT_BACKLOG' || true"
# With the boot unit the body runs from a temporary file (the script installs that file).
HEREDOC_FILE_LINE = (
    "/bin/bash -c 'f=$(mktemp)&&cat>\"$f\"&&/bin/bash \"$f\";rm -f \"$f\"' <<'CDK_AUDIT_BACKLOG' || true"
)

# The longest inputs a block can get: the largest limit, the longest wait time, a long instance type.
LONGEST_SOURCE = "u7in-32tb.224xlarge/33554432MiB"


def inputs_for(features: frozenset, source: str = LONGEST_SOURCE) -> BlockInputs:
    return BlockInputs(
        target=None if "auto" in features else 2147483647,
        backlog_wait_time=60000 if "wait" in features else None,
        install_auditd="install" in features,
        kernel_cmdline="cmdline" in features,
        allow_lower=True,
        source=source,
        boot_unit=("auto" if "auto" in features else "fixed") if "unit" in features else "off",
        monitor_interval=3600 if "monitor" in features else None,
    )


# Every feature has its part in the script (a test below checks each one is used by some gate).
SCRIPT_FEATURES = FEATURES
ALL_COMBINATIONS = [
    frozenset(c) for n in range(len(SCRIPT_FEATURES) + 1) for c in itertools.combinations(SCRIPT_FEATURES, n)
]


def block_script(block: str) -> str:
    """The text the block's /bin/bash runs: the here-document's body."""
    lines = block.splitlines()
    assert lines[0] == BLOCK_BEGIN and lines[1] in (HEREDOC_LINE, HEREDOC_FILE_LINE)
    assert lines[-2] == "CDK_AUDIT_BACKLOG" and lines[-1] == BLOCK_END
    return "\n".join(lines[2:-2]) + "\n"


def test_block_shape_follows_the_design_contract():
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB"))
    lines = block.splitlines()
    assert block.endswith("\n")
    assert lines[:11] == [
        BLOCK_BEGIN,
        HEREDOC_LINE,
        "CAB_TARGET=8192",
        "CAB_FRACTION_PPM=10000",
        "CAB_MIN=320",
        "CAB_MAX=262144",
        "CAB_WAIT=",
        "CAB_KERNEL_CMDLINE=0",
        "CAB_INSTALL_AUDITD=0",
        "CAB_ALLOW_LOWER=0",
        "CAB_SOURCE=m5.large/8192MiB",
    ]
    assert lines[-3] == 'cab_main "$@" </dev/null'
    # the body's own defaults (CAB_TARGET="${CAB_TARGET:-auto}") are not in the block: the input section
    # is replaced, not prepended to
    assert "${CAB_TARGET:-" not in block


@pytest.mark.parametrize("features", ALL_COMBINATIONS, ids=lambda f: "+".join(sorted(f)) or "none")
def test_compacted_body_has_no_comments_blank_lines_indentation_or_markers(features):
    body = _compact_body(features)
    for line in body.splitlines():
        assert line and line == line.strip()
        assert not line.startswith("#"), line
    assert "@@CAB_" not in body
    assert "CDK_AUDIT_BACKLOG" not in body


def test_optional_parts_are_left_out_when_unused():
    plain = _compact_body(frozenset())
    assert "cab_limit_for_kib" not in plain and "MemTotal" not in plain
    assert "--backlog_wait_time" not in plain and "auditctl -h" not in plain
    assert "apt-get" not in plain and "dnf" not in plain
    assert "grubby" not in plain and "GRUB_CMDLINE_LINUX" not in plain
    full = _compact_body(frozenset(FEATURES))
    for word in ("cab_limit_for_kib", "--backlog_wait_time", "apt-get", "grubby"):
        assert word in full
    assert BlockInputs().features() == {"auto"}
    assert BlockInputs(target=1, backlog_wait_time=0).features() == {"wait"}
    assert inputs_for(frozenset(FEATURES)).features() == set(FEATURES)


def test_monitor_parts_stay_out_of_blocks_without_it():
    for f in ALL_COMBINATIONS:
        body = _compact_body(f)
        if "monitor" not in f:
            assert "cab_sample" not in body and "CAB_MONITOR" not in body and "sample" not in body
        else:
            assert "cab_sample()" in body and "cab_mon()" in body
        # one wr, the sampler's where it is on (it adds CAB_MONITOR to the env file)
        assert body.count("wr() {") == (1 if {"unit", "monitor"} & f else 0)
        assert ('"CAB_MONITOR=$CAB_MONITOR"' in body) == ("monitor" in f)
    assert BlockInputs(target=1, monitor_interval=60).features() == {"monitor"}


def test_unknown_feature_is_refused():
    with pytest.raises(ValueError, match="unknown block features"):
        _compact_body(frozenset({"telemetry"}))


def test_every_gate_in_the_script_is_closed_and_known():
    from cdk_audit_backlog import user_data

    opened = None
    for line in script_text().splitlines():
        s = line.strip()
        m = user_data._IF_RE.fullmatch(s)
        if m:
            _, terms = user_data.gate_terms(m.group(1))  # raises for an unknown feature or a mixed gate
            assert opened is None and all(name in FEATURES for _, name in terms)
            opened = m.group(1)
        elif s == "# @@CAB_ENDIF@@":
            assert opened is not None
            opened = None
        else:
            assert not s.startswith("# @@CAB_IF"), s  # a gate the renderer would not read
    assert opened is None


def source_directives() -> list[str]:
    """The checks the script disables in place (``# shellcheck disable=SCnnnn  # reason``): its comments,
    and so those directives, are not in the compacted block."""
    codes = re.findall(r"#\s*shellcheck disable=(SC[0-9]+)", script_text())
    assert codes, "expected the script's documented exceptions"
    return sorted(set(codes))


@pytest.mark.parametrize("features", ALL_COMBINATIONS, ids=lambda f: "+".join(sorted(f)) or "none")
def test_rendered_block_passes_bash_n_and_shellcheck(tmp_path, features):
    script = tmp_path / "block.sh"
    script.write_text("#!/bin/bash\n" + block_script(render_block(inputs_for(features))))
    subprocess.run(["bash", "-n", str(script)], check=True)
    excluded = source_directives()
    if features != frozenset(SCRIPT_FEATURES):
        # With optional parts left out, some inputs (CAB_MIN...) and status fields are set but unused.
        excluded.append("SC2034")
    r = subprocess.run(
        [str(SHELLCHECK), "--severity=style", "--exclude=" + ",".join(excluded), str(script)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout


def test_shipped_scripts_pass_shellcheck():
    scripts = sorted((REPO / "userdata").glob("*.sh"))
    assert scripts
    r = subprocess.run(
        [str(SHELLCHECK), "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


def test_shellcheck_would_catch_a_slip(tmp_path):
    """The shellcheck tests can fail: an unquoted path in the block is reported."""
    script = tmp_path / "bad.sh"
    body = block_script(render_block(inputs_for(frozenset())))
    bad = body.replace('cat "$E/rules.d/$fn"', "cat $E/rules.d/$fn")
    assert bad != body
    script.write_text("#!/bin/bash\n" + bad)
    r = subprocess.run([str(SHELLCHECK), "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode != 0 and "SC2086" in r.stdout


# Size budget. EC2 user data is at most 16 KB; the block must leave the user's script most of it.
# Without the boot unit and opt-in extras (a known instance type, or auto for an unknown one) the block
# stays within 3.2 KB (3072 until the exit status for SSM, about 50 bytes, and the modes, about 20);
# the boot unit (on by default: the script installs a copy of itself, its inputs and the unit file, and
# the formula rides along for the unit's auto mode) within 5.1 KB; every option adds a bounded part; all
# options together stay under 6.5 KB (leaving 9.5 KB to the user). Figures are printed with -s
# (pytest -s tests/test_user_data.py -k size).
# 0.2.0 (issue 18) raised the caps by what the kernel command line as an existing limit costs in every
# block (the `cl` reader: 129 bytes; auto 3189 -> 3318, auto+unit 5166 -> 5295) and, in blocks with
# kernel_cmdline only, the GRUB drop-in, the kept larger value and the read-back of the next boot's
# command line (805 bytes; all options 6593 -> 7527, leaving 8.8 KB to the user).
# The sampler (issue 17, monitor_interval) adds about 3.8 KB (4.1 KB without the unit: the script file, the
# env file and the second wr come with it): the timer and service files, the status reader, the datagram, the
# drift decision and apply's owner line. Its caps: 7.25 KB without the unit, 9 KB with it, 11.25 KB with every
# option (4.9 KB left to the user in plain form; the compact form takes the default to 5.1 KB).
MONITOR_SIZE_CAPS = {
    frozenset({"monitor"}): 7168,
    frozenset({"auto", "monitor"}): 7552,  # +128 for the sampler parsing auditctl -s with bash alone
    frozenset({"unit", "monitor"}): 8960,
    frozenset({"auto", "unit", "monitor"}): 9344,
}
MONITOR_ALL_OPTIONS_CAP = 11520
SIZE_CAPS = {
    frozenset(): 3328,
    frozenset({"auto"}): 3328,
    frozenset({"wait"}): 3328,
    frozenset({"unit"}): 5376,  # a fixed backlog_limit with the unit
    frozenset({"auto", "unit"}): 5376,  # the default: a known type (or auto) with the unit
    frozenset({"wait", "unit"}): 5376,
}
ALL_OPTIONS_CAP = 7552


def test_block_size_report_and_caps():
    sizes = {f: len(render_block(inputs_for(f)).encode()) for f in ALL_COMBINATIONS}
    for f, n in sorted(sizes.items(), key=lambda kv: kv[1]):
        print(f"block bytes {n:5d}  {'+'.join(sorted(f)) or '(no options)'}")
    for f, cap in {**SIZE_CAPS, **MONITOR_SIZE_CAPS}.items():
        assert sizes[f] <= cap, f"{sorted(f)}: {sizes[f]} bytes > {cap}"
    # blocks without the sampler keep the caps they had before it
    assert max(n for f, n in sizes.items() if "monitor" not in f) <= ALL_OPTIONS_CAP
    assert max(sizes.values()) <= MONITOR_ALL_OPTIONS_CAP
    # every option costs something, so a part left in by mistake shows up here
    base = sizes[frozenset()]
    for name in SCRIPT_FEATURES:
        assert sizes[frozenset({name})] > base


def test_typical_block_size(snapshot):
    """The block for an m5.large, byte for byte (a change to the script shows up in review)."""
    block = render_block(BlockInputs(target=8192, source="m5.large/8192MiB"))
    assert len(block.encode()) <= 3328
    assert block == snapshot


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(target=0), "target"),
        (dict(target=2**31), "target"),
        (dict(target=True), "target"),
        (dict(target="8192"), "target"),
        (dict(backlog_wait_time=-1), "backlog_wait_time"),
        (dict(backlog_wait_time=60001), "backlog_wait_time"),
        (dict(kernel_cmdline=1), "kernel_cmdline"),
        (dict(install_auditd="yes"), "install_auditd"),
        (dict(allow_lower=None), "allow_lower"),
        (dict(source="m5.large; reboot"), "source"),
        (dict(source="$(id)"), "source"),
        (dict(source="M5.large"), "source"),
        (dict(source="m5.large/8192MiB\nCAB_TARGET=1"), "source"),
        (dict(policy="default"), "policy"),
    ],
)
def test_inputs_that_could_reach_a_root_shell_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockInputs(**kwargs)


@pytest.mark.parametrize(
    "body,error",
    [
        ("# @@CAB_IF auto@@\n# @@CAB_IF wait@@\nx\n# @@CAB_ENDIF@@\n# @@CAB_ENDIF@@\n", "nested"),
        ("# @@CAB_IF auto@@\nx\n", "not closed"),
        ("x\n# @@CAB_ENDIF@@\n", "without"),
        ("# @@CAB_IF telemetry@@\nx\n# @@CAB_ENDIF@@\n", "bad"),
        ("# @@CAB_IF unit|telemetry@@\nx\n# @@CAB_ENDIF@@\n", "bad"),
        ("# @@CAB_IF unit|auto&!wait@@\nx\n# @@CAB_ENDIF@@\n", "mixes"),
        ("echo CDK_AUDIT_BACKLOG\n", "delimiter"),
    ],
)
def test_malformed_script_is_refused(monkeypatch, body, error):
    from cdk_audit_backlog import user_data

    text = "#!/bin/bash\n# @@CAB_INPUTS_BEGIN@@\nCAB_TARGET=1\n# @@CAB_INPUTS_END@@\n" + body
    monkeypatch.setattr(user_data, "script_text", lambda: text)
    user_data._compact_body.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=error):
            user_data._compact_body(frozenset())
    finally:
        user_data._compact_body.cache_clear()
