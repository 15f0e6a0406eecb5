"""The shell twin of the policy formula (``cab_limit_for_kib`` in userdata/audit-backlog.sh) gives the same
limits as ``BacklogPolicy.limit_for_memory_bytes`` in policy.py, for the default policy and random ones.

The function is taken from the shipped script's text (the very lines the rendered block carries) and
run by bash with the policy in ``CAB_FRACTION_PPM``/``CAB_MIN``/``CAB_MAX``, as the block sets them.
One bash process evaluates a whole list of MemTotal values per example.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cdk_audit_backlog.policy import KERNEL_MAX_BACKLOG_LIMIT, BacklogPolicy
from cdk_audit_backlog.user_data import BlockInputs, _compact_body, script_text

FUNCTION_RE = re.compile(r"^cab_limit_for_kib\(\) \{\n.*?^\}\n", re.S | re.M)

# MemTotal (kB) of real machines, from 0.5 GiB to 24 TiB, and the largest value policy.py accepts
# (2**62 bytes).
MEM_KIB = st.one_of(
    st.integers(min_value=0, max_value=2**62 // 1024),
    st.integers(min_value=400_000, max_value=25 * 2**30),
)
POLICIES = st.builds(
    lambda ppm, lo, span: BacklogPolicy(
        memory_fraction=ppm / 1_000_000, minimum=lo, maximum=min(lo + span, KERNEL_MAX_BACKLOG_LIMIT)
    ),
    st.integers(min_value=1, max_value=250_000),
    st.integers(min_value=1, max_value=KERNEL_MAX_BACKLOG_LIMIT),
    st.integers(min_value=0, max_value=KERNEL_MAX_BACKLOG_LIMIT),
)  # fmt: skip


def shell_function() -> str:
    m = FUNCTION_RE.search(script_text())
    assert m, "cab_limit_for_kib not found in the script"
    return m.group(0)


def shell_limits(policy: BacklogPolicy, kibs: list[int], function: str | None = None) -> list[int]:
    program = (function or shell_function()) + 'for k in "$@"; do cab_limit_for_kib "$k"; done\n'
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", program, "shell-policy", *map(str, kibs)],
        env={
            "PATH": "/usr/bin:/bin",
            "CAB_FRACTION_PPM": str(policy.fraction_ppm),
            "CAB_MIN": str(policy.minimum),
            "CAB_MAX": str(policy.maximum),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [int(x) for x in r.stdout.split()]


def python_limits(policy: BacklogPolicy, kibs: list[int]) -> list[int]:
    return [policy.limit_for_memory_bytes(k * 1024) for k in kibs]


@settings(max_examples=150, deadline=None)
@given(st.lists(MEM_KIB, min_size=1, max_size=40))
@example([0, 1, 511_000, 1_000_000, 8_006_068, 16_000_000, 2**62 // 1024])
def test_default_policy_agrees(kibs):
    policy = BacklogPolicy()
    assert shell_limits(policy, kibs) == python_limits(policy, kibs)


@settings(max_examples=150, deadline=None)
@given(POLICIES, st.lists(MEM_KIB, min_size=1, max_size=20))
def test_random_policies_agree(policy, kibs):
    assert shell_limits(policy, kibs) == python_limits(policy, kibs)


@settings(max_examples=60, deadline=None)
@given(POLICIES, st.integers(min_value=0, max_value=40))
def test_agreement_at_power_of_two_edges(policy, exponent):
    """MemTotal values that put budget/8970 exactly on, and one byte around, a power of two."""
    ppm = policy.fraction_ppm
    fits = 2**exponent
    # smallest byte count whose budget reaches fits*8970, rounded up to whole kB, and its neighbours
    need = -(-fits * 8970 * 1_000_000 // ppm)
    kib = -(-need // 1024)
    kibs = [k for k in (kib - 1, kib, kib + 1) if 0 <= k <= 2**62 // 1024]
    assert shell_limits(policy, kibs) == python_limits(policy, kibs)


def test_the_rendered_auto_block_carries_the_same_function():
    body = _compact_body(BlockInputs().features())
    compact = "\n".join(
        line.strip() for line in shell_function().splitlines() if not line.strip().startswith("#")
    )
    assert compact + "\n" in body
    # and that compacted text computes the same numbers
    policy = BacklogPolicy(memory_fraction=0.02, minimum=256, maximum=65536)
    kibs = [0, 1_000_000, 8_006_068, 64_000_000, 2**40]
    assert shell_limits(policy, kibs, compact + "\n") == python_limits(policy, kibs)


@pytest.mark.parametrize(
    "mutation,kib",
    [
        (("l*2<=fit", "l*2<fit"), 7_176_000),  # 7,176,000 kB: budget/8970 is exactly 8192
        (("$1*1024", "$1*1000"), 14_400_000),
        (
            ("ppm*(b/1000000)", "ppm*b/1000000"),
            2**50,
        ),  # the unsplit product overflows 64 bits  # kB taken as 1000 bytes: 16384 becomes 8192
        (("l>CAB_MAX?CAB_MAX", "l>CAB_MIN?CAB_MAX"), 16_000_000),
    ],
)
def test_a_broken_twin_would_be_caught(mutation, kib):
    """The comparison can fail: plausible slips in the shell formula change its results."""
    broken = shell_function().replace(*mutation)
    assert broken != shell_function()
    policy = BacklogPolicy()
    assert shell_limits(policy, [kib]) == python_limits(policy, [kib])
    assert shell_limits(policy, [kib], broken) != python_limits(policy, [kib])


@pytest.mark.parametrize(
    "mib,expected", [(256, 320), (512, 512), (1024, 1024), (8192, 8192), (16384, 16384), (786432, 262144)]
)
def test_known_instance_sizes(mib, expected):
    policy = BacklogPolicy()
    assert shell_limits(policy, [mib * 1024]) == [expected] == [policy.limit_for_memory(mib)]
