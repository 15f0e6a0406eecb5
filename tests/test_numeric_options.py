"""Every numeric option of the public API against the values fuzzing found or could find.

Each bad value (nan, the infinities, huge integers, Decimal, Fraction, numpy numbers, bool, strings of
numbers, ...) must give a ValueError that names the option, never an OverflowError, TypeError or a
silent acceptance; each good value must be accepted and behave exactly like the equivalent int (or float
for the memory fraction). An explicit table of the known cases, then hypothesis over the types.

Covered: BacklogPolicy(memory_fraction, minimum, maximum) and its limit_for_memory / limit_for_memory_bytes /
worst_case_bytes; AuditBacklog(backlog_limit, backlog_wait_time); BlockInputs(target, backlog_wait_time);
AuditBacklogAssociation(backlog_limit, backlog_wait_time); the CLI's --memory-fraction, --minimum,
--maximum, --max-workers and plan sizes. AuditBacklogCheck's only numbers come from its memory_of
callable: tests/test_check.py.
"""

from __future__ import annotations

import enum
import io
import itertools
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, NamedTuple

import numpy as np  # requirements-dev.txt: numpy's numbers are what data-science users pass around
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aws_cdk import App, Stack

from cdk_audit_backlog import AuditBacklog, AuditBacklogAssociation, BacklogPolicy, cli
from cdk_audit_backlog.policy import KERNEL_MAX_BACKLOG_LIMIT, MAX_BACKLOG_WAIT_TIME
from cdk_audit_backlog.user_data import BlockInputs, render_block


class IntOption(NamedTuple):
    name: str  # what the ValueError must name
    make: Callable[[Any], Any]  # builds the thing from the value (raises for a bad one)
    observe: Callable[[Any], Any]  # what a good value must make identical to the equivalent int
    low: int
    high: int


def _aspect_inputs(aspect: AuditBacklog) -> Any:
    inputs = aspect.block_inputs(aspect.backlog_limit, "m5.large/8192MiB")
    return (type(aspect.backlog_limit), type(aspect.backlog_wait_time), inputs.assignments())


_STACK = Stack(App(), "Associations")
_IDS = itertools.count()


def _association(**kwargs: Any) -> AuditBacklogAssociation:
    return AuditBacklogAssociation(_STACK, f"A{next(_IDS)}", **kwargs)


INT_OPTIONS = [
    IntOption("minimum", lambda v: BacklogPolicy(minimum=v, maximum=KERNEL_MAX_BACKLOG_LIMIT),
              lambda p: (p, type(p.minimum), p.limit_for_memory(8192)), 1, KERNEL_MAX_BACKLOG_LIMIT),
    IntOption("maximum", lambda v: BacklogPolicy(minimum=1, maximum=v),
              lambda p: (p, type(p.maximum), p.limit_for_memory(8192)), 1, KERNEL_MAX_BACKLOG_LIMIT),
    IntOption("backlog_limit", lambda v: AuditBacklog(backlog_limit=v), _aspect_inputs, 1,
              KERNEL_MAX_BACKLOG_LIMIT),
    IntOption("backlog_wait_time", lambda v: AuditBacklog(backlog_wait_time=v), _aspect_inputs, 0,
              MAX_BACKLOG_WAIT_TIME),
    IntOption("target", lambda v: BlockInputs(target=v), render_block, 1, KERNEL_MAX_BACKLOG_LIMIT),
    IntOption("backlog_wait_time", lambda v: BlockInputs(backlog_wait_time=v), render_block, 0,
              MAX_BACKLOG_WAIT_TIME),
    IntOption("backlog_limit", lambda v: _association(backlog_limit=v), lambda a: a.run_command, 1,
              KERNEL_MAX_BACKLOG_LIMIT),
    IntOption("backlog_wait_time", lambda v: _association(backlog_wait_time=v), lambda a: a.run_command, 0,
              MAX_BACKLOG_WAIT_TIME),
    IntOption("memory_mib", lambda v: BacklogPolicy().limit_for_memory(v), lambda n: (n, type(n)), 0, 2**42),
    IntOption("memory_bytes", lambda v: BacklogPolicy().limit_for_memory_bytes(v), lambda n: (n, type(n)), 0,
              2**62),
    IntOption("limit", BacklogPolicy.worst_case_bytes, lambda n: (n, type(n)), 0, KERNEL_MAX_BACKLOG_LIMIT),
]
INT_IDS = [
    "BacklogPolicy.minimum", "BacklogPolicy.maximum", "AuditBacklog.backlog_limit",
    "AuditBacklog.backlog_wait_time", "BlockInputs.target", "BlockInputs.backlog_wait_time",
    "AuditBacklogAssociation.backlog_limit", "AuditBacklogAssociation.backlog_wait_time", "limit_for_memory",
    "limit_for_memory_bytes",
    "worst_case_bytes",
]
assert len(INT_IDS) == len(INT_OPTIONS)

# Bad for every integer option whatever its range: not integers, or integers no option takes.
BAD_FOR_INTEGERS = [
    float("nan"), float("inf"), float("-inf"), 8192.0, 0.5, -0.0,
    np.float64("nan"), np.float64("inf"), np.float32(8192), np.longdouble("inf"),
    Decimal("8192"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
    Decimal("1e999999999"),
    Fraction(8192), Fraction(1, 2),
    True, False, np.bool_(True), np.bool_(False),
    "8192", "", " 8192", "0x2000", "8_192", b"8192", complex(8192), [8192], (8192,), {8192}, object(),
    2**64, -(2**64), 10**100, -(10**100), 10**5000, np.uint64(2**64 - 1), np.int64(-(2**63)),
]


def _id(value: Any) -> str:
    if isinstance(value, int) and abs(value) > 10**30:
        return f"{type(value).__name__}:~2**{abs(value).bit_length()}"
    return f"{type(value).__name__}:{str(value)[:20]}"


class Size(enum.IntEnum):  # an int subclass users may hold their sizes in
    SMALL = 320
    BIG = 8192


@pytest.mark.parametrize("option", INT_OPTIONS, ids=INT_IDS)
@pytest.mark.parametrize("bad", BAD_FOR_INTEGERS, ids=_id)
def test_bad_values_of_every_integer_option_name_it(option, bad):
    with pytest.raises(
        ValueError, match=rf"^{option.name} must be an integer from {option.low} to {option.high}"
    ):
        option.make(bad)


@pytest.mark.parametrize("option", INT_OPTIONS, ids=INT_IDS)
def test_just_outside_the_range_names_the_option(option):
    for bad in (option.low - 1, option.high + 1, np.int64(option.low - 1)):
        with pytest.raises(
            ValueError, match=rf"^{option.name} must be an integer from {option.low} to {option.high}"
        ):
            option.make(bad)


@pytest.mark.parametrize("option", INT_OPTIONS, ids=INT_IDS)
def test_integer_types_behave_like_the_int(option):
    for n in {option.low, option.high, min(max(option.low, 8192), option.high),
              min(max(option.low, 320), option.high)}:
        expected = option.observe(option.make(n))
        kinds = [np.int64(n), np.uint64(n), Size.BIG if n == 8192 else n]
        kinds += [np.int32(n)] if n < 2**31 else []
        kinds += [np.uint16(n)] if n < 2**16 else []
        for value in kinds:
            assert option.observe(option.make(value)) == expected, (type(value), n)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_hypothesis_integers_in_range_are_taken_and_out_of_range_are_refused(data):
    option = data.draw(st.sampled_from(INT_OPTIONS))
    n = data.draw(st.integers(option.low, option.high))
    as_numpy = np.int64(n) if n < 2**63 else n
    assert option.observe(option.make(as_numpy)) == option.observe(option.make(n))
    outside = data.draw(
        st.one_of(st.integers(max_value=option.low - 1), st.integers(min_value=option.high + 1))
    )
    with pytest.raises(ValueError, match=rf"^{option.name} must be an integer"):
        option.make(outside)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_hypothesis_non_integers_are_refused_by_every_integer_option(data):
    option = data.draw(st.sampled_from(INT_OPTIONS))
    bad = data.draw(st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.fractions(),
        st.booleans(),
        st.text(max_size=12),
        st.integers().map(str),
        st.complex_numbers(),
    ))
    with pytest.raises(ValueError, match=rf"^{option.name} must be an integer"):
        option.make(bad)


def test_zero_as_a_limit_is_refused_and_says_why():
    # 0 is "no limit at all" to the kernel: this library bounds the worst case, so it never sets 0 itself
    # (an image's existing 0 is kept at boot; see docs/design.md).
    for make in (lambda: AuditBacklog(backlog_limit=0), lambda: BlockInputs(target=np.int64(0)),
                 lambda: BacklogPolicy(minimum=0)):
        with pytest.raises(ValueError, match="no limit at all"):
            make()


# -- memory_fraction: a real number ----------------------------------------------------------------

BAD_FRACTIONS = [
    float("inf"), float("-inf"), float("nan"), np.float64("inf"), np.float32("nan"), np.longdouble("-inf"),
    Decimal("Infinity"), Decimal("-Infinity"), Decimal("NaN"), Decimal("sNaN"),
    Decimal("1e999999999"), Decimal("1e-999999999"), Decimal("0"), Decimal("0.26"),
    0, 0.0, -0.0, -0.01, 0.2500001, 0.3, 1, 2**64, 10**100, 10**5000, -(10**100), 1e308, 5e-324,
    4e-7, Fraction(1, 10**7), Fraction(3, 10), np.int64(1), np.float64(1e-9),
    True, False, np.bool_(True), "0.01", "", b"0.01", complex(0.01), None, [0.01],
]


@pytest.mark.parametrize("bad", BAD_FRACTIONS, ids=_id)
def test_bad_memory_fractions_name_the_option(bad):
    with pytest.raises(
        ValueError, match=r"^memory_fraction must be a number with 0 < memory_fraction <= 0.25"
    ):
        BacklogPolicy(memory_fraction=bad)


def test_memory_fraction_inf_is_a_value_error_not_an_overflow_error():
    """The hole fuzzing found: inf * 1e6 rounded raised OverflowError."""
    with pytest.raises(ValueError, match="memory_fraction"):
        BacklogPolicy(memory_fraction=float("inf"))


@pytest.mark.parametrize(
    "value",
    [Fraction(1, 100), Decimal("0.01"), np.float64(0.01), np.longdouble("0.01"), 0.01],
    ids=lambda v: type(v).__name__,
)
def test_real_number_types_behave_like_the_float(value):
    policy = BacklogPolicy(memory_fraction=value)
    assert policy == BacklogPolicy() and type(policy.memory_fraction) is float
    assert policy.fraction_ppm == 10000
    assert [policy.limit_for_memory(m) for m in (512, 1024, 8192, 131072)] == [512, 1024, 8192, 131072]


def test_a_float32_fraction_behaves_like_its_float_value():
    value = np.float32(0.02)
    assert BacklogPolicy(memory_fraction=value) == BacklogPolicy(memory_fraction=float(value))
    assert BacklogPolicy(memory_fraction=value).fraction_ppm == 20000


@settings(max_examples=200, deadline=None)
@given(ppm=st.integers(1, 250_000), kind=st.sampled_from(["float", "Fraction", "Decimal", "numpy"]))
def test_hypothesis_every_representation_of_a_fraction_gives_the_same_policy(ppm, kind):
    value = {
        "float": ppm / 1e6,
        "Fraction": Fraction(ppm, 10**6),
        "Decimal": Decimal(ppm) / Decimal(10**6),
        "numpy": np.float64(ppm / 1e6),
    }[kind]
    policy = BacklogPolicy(memory_fraction=value)
    assert policy.fraction_ppm == ppm
    assert policy == BacklogPolicy(memory_fraction=ppm / 1e6)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(),
    st.integers(),
))
def test_hypothesis_any_real_number_is_either_taken_in_range_or_refused_by_name(value):
    try:
        policy = BacklogPolicy(memory_fraction=value)
    except ValueError as e:
        assert str(e).startswith("memory_fraction must be a number")
        return
    assert 0 < Fraction(policy.memory_fraction) <= Fraction(1, 4) and 1 <= policy.fraction_ppm <= 250_000


# -- CLI arguments --------------------------------------------------------------------------------


def _cli(argv, capsys):
    out = io.StringIO()
    rc = cli.main(argv, out=out)
    return rc, out.getvalue(), capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--memory-fraction", "inf"), ("--memory-fraction", "-inf"), ("--memory-fraction", "nan"),
     ("--memory-fraction", "1e400"), ("--memory-fraction", "0"), ("--memory-fraction", "1e-9"),
     ("--minimum", "0"), ("--minimum", "99999999999999999999999"), ("--maximum", "-1"),
     ("--maximum", str(2**64))],
)
def test_cli_policy_arguments_name_the_flag(flag, value, capsys):
    rc, out, err = _cli(["plan", "m5.large", f"{flag}={value}"], capsys)  # = so that -inf is a value
    assert rc == 2 and out == ""
    assert err.startswith(f"cdk-audit-backlog: error: {flag}: {flag[2:].replace('-', '_')} must be"), err


@pytest.mark.parametrize(
    "flag, value",
    [("--minimum", "0x10"), ("--minimum", "1e3"), ("--maximum", "8192.0"), ("--memory-fraction", "1/100"),
     ("--minimum", "9" * 5000)],
)
def test_cli_policy_arguments_that_are_not_numbers_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["plan", "m5.large", flag, value])
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_cli_policy_arguments_give_the_same_plan_as_the_defaults(capsys):
    default = _cli(["plan", "m5.large", "r5.4xlarge", "--format", "json"], capsys)
    spelled = _cli(["plan", "m5.large", "r5.4xlarge", "--format", "json", "--memory-fraction", "1e-2",
                    "--minimum", "0320", "--maximum", "262144"], capsys)
    assert default == spelled and default[0] == 0


@pytest.mark.parametrize("command", [["verify", "--stack", "S"], ["refresh-types"]])
@pytest.mark.parametrize("value", ["0", "-1", "65", "1e3", "8.0", "", "nan", "9" * 5000])
def test_cli_max_workers_is_an_integer_from_1_to_64(command, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(command + [f"--max-workers={value}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --max-workers: must be an integer from 1 to 64" in err


@pytest.mark.parametrize("size", ["99999999999999999999999GiB", "4398046511105MiB", "9" * 5000 + "MiB"])
def test_cli_plan_sizes_beyond_the_bound_are_errors(size, capsys):
    rc, out, err = _cli(["plan", size], capsys)
    assert rc == 2 and "plan: size" in err and "too large" in err
