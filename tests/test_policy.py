"""policy.py: the documented examples, the properties of the formula, and errors that name the option."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdk_audit_backlog.policy import MAX_AUDIT_MESSAGE_LENGTH, BacklogPolicy

GIB = 1024


@pytest.mark.parametrize(
    "memory_mib, limit",
    [
        (512, 512),
        (1 * GIB, 1024),
        (8 * GIB, 8192),
        (64 * GIB, 65536),
        (256 * GIB, 262144),
        (24 * 1024 * GIB, 262144),
        (128, 320),
        (0, 320),
    ],
)
def test_documented_examples(memory_mib, limit):
    assert BacklogPolicy().limit_for_memory(memory_mib) == limit


def _is_power_of_two(n):
    return n > 0 and n & (n - 1) == 0


policies = st.builds(
    lambda ppm, lo, span: BacklogPolicy(memory_fraction=ppm / 1e6, minimum=lo, maximum=lo + span),
    st.integers(min_value=1, max_value=250_000),
    st.integers(min_value=1, max_value=1 << 20),
    st.integers(min_value=0, max_value=1 << 24),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, memory=st.integers(min_value=0, max_value=1 << 30))
def test_limit_is_bounded_and_a_power_of_two_unless_clamped(policy, memory):
    limit = policy.limit_for_memory(memory)
    assert policy.minimum <= limit <= policy.maximum
    if limit not in (policy.minimum, policy.maximum):
        assert _is_power_of_two(limit)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    a=st.integers(min_value=0, max_value=1 << 30),
    b=st.integers(min_value=0, max_value=1 << 30),
)
def test_limit_is_monotone_in_memory(policy, a, b):
    lo, hi = sorted((a, b))
    assert policy.limit_for_memory(lo) <= policy.limit_for_memory(hi)


@settings(max_examples=300, deadline=None)
@given(policy=policies, memory=st.integers(min_value=1, max_value=1 << 30))
def test_worst_case_fits_the_fraction_unless_the_floor_applies(policy, memory):
    limit = policy.limit_for_memory(memory)
    budget = memory * 1024 * 1024 * policy.fraction_ppm / 1e6
    if limit > policy.minimum:
        assert limit * MAX_AUDIT_MESSAGE_LENGTH <= budget
        # ... and it is the largest power of two that does (unless the ceiling cut it).
        if limit < policy.maximum:
            assert 2 * limit * MAX_AUDIT_MESSAGE_LENGTH > budget


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory_fraction": 0}, "memory_fraction must be a number with 0 < memory_fraction <= 0.25"),
        ({"memory_fraction": -0.1}, "memory_fraction"),
        ({"memory_fraction": 0.3}, "memory_fraction"),
        ({"memory_fraction": 1e-9}, "resolution"),
        ({"memory_fraction": True}, "memory_fraction"),
        ({"memory_fraction": "0.01"}, "memory_fraction"),
        ({"memory_fraction": float("nan")}, "memory_fraction"),
        ({"minimum": 0}, "minimum must be an integer from 1 to 2147483647"),
        ({"minimum": 320.0}, "minimum"),
        ({"minimum": True}, "minimum"),
        ({"maximum": 2**31}, "maximum must be an integer from 1 to 2147483647"),
        ({"minimum": 1024, "maximum": 512}, "minimum must be <= maximum"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BacklogPolicy(**kwargs)


def test_bad_memory_is_refused():
    with pytest.raises(ValueError, match="memory_mib"):
        BacklogPolicy().limit_for_memory(-1)
    with pytest.raises(ValueError, match="memory_mib"):
        BacklogPolicy().limit_for_memory(1.5)


def test_worst_case_matches_the_documented_figures():
    assert round(BacklogPolicy.worst_case_bytes(320) / 2**20, 1) == 2.7
    assert round(BacklogPolicy.worst_case_bytes(8192) / 2**20) == 70
