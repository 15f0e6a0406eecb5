"""The bundled instance-memory table: contents, lookups, and that regeneration reproduces it."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import aws_cdk as cdk
import aws_cdk.aws_ec2 as ec2
import botocore.session
import moto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdk_audit_backlog import instance_memory as im
from cdk_audit_backlog.cli import main

DATA = Path(im.__file__).resolve().parent / "data"
GENERATED = DATA / im.DATA_FILE
EXTRA = DATA / im.EXTRA_FILE
SEED_NOTE = f"seeded offline from moto {moto.__version__}'s mock EC2 (its bundled instance_types.json.gz)"


@pytest.fixture(autouse=True)
def _dummy_aws(dummy_aws):
    """Every test here talks to moto only."""


def test_every_entry_is_a_positive_mib_count():
    table = im.all_types()
    assert len(table) >= 1395
    bad = {t: m for t, m in table.items() if not (isinstance(m, int) and not isinstance(m, bool) and m > 0)}
    assert bad == {}


@pytest.mark.parametrize(
    "family", ["t2", "t3", "t3a", "t4g", "m5", "m7i", "m8g", "c7g", "c8i", "r8g", "x2iedn", "p5"]
)
def test_family_from_t2_to_the_newest_is_present(family):
    sizes = [t for t in im.all_types() if t.split(".")[0] == family]
    assert sizes, f"no {family}.* type in the table"


@pytest.mark.parametrize(
    "name, mib",
    # Published sizes, independent of the data file: GiB x 1024.
    [("t3.micro", 1024), ("m5.large", 8192), ("t4g.nano", 512), ("r8g.large", 16384),
     ("x2iedn.32xlarge", 4096 * 1024), ("p5.48xlarge", 2048 * 1024), ("i3.metal", 512 * 1024)],
)
def test_known_sizes(name, mib):
    assert im.memory_mib(name) == mib


def test_string_and_instance_type_lookups_agree_for_the_builders():
    it = ec2.InstanceType.of(ec2.InstanceClass.M5, ec2.InstanceSize.LARGE)
    assert im.memory_mib(it) == im.memory_mib("m5.large") == 8192
    graviton = ec2.InstanceType.of(ec2.InstanceClass.COMPUTE8_GRAVITON4, ec2.InstanceSize.XLARGE2)
    assert graviton.to_string() == "c8g.2xlarge"
    assert im.memory_mib(graviton) == im.memory_mib("c8g.2xlarge") == 16384


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(im.all_types())))
def test_string_and_instance_type_lookups_agree(name):
    assert im.memory_mib(ec2.InstanceType(name)) == im.memory_mib(name) == im.all_types()[name]


def test_unknown_types_are_none_never_a_guess():
    assert im.memory_mib("m5.enormous") is None
    assert im.memory_mib("M5.LARGE") is None  # EC2 spells types in lower case; no normalising guess
    assert im.memory_mib("") is None


def test_tokens_are_none():
    token = cdk.Token.as_string(cdk.Fn.ref("InstanceTypeParam"))
    assert im.memory_mib(token) is None
    assert im.memory_mib(ec2.InstanceType(token)) is None


def test_wrong_argument_type_is_a_type_error():
    with pytest.raises(TypeError, match="instance_type"):
        im.memory_mib(8192)  # type: ignore[arg-type]


def test_header_records_source_date_and_count():
    info = im.table_info()
    assert info.count == 1395  # what moto's mock returns today
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", info.date)
    assert "DescribeInstanceTypes" in info.source
    assert info.total == info.count + info.extra_count == len(im.all_types())


def test_regeneration_against_moto_reproduces_the_committed_file(tmp_path, capsys):
    committed = GENERATED.read_text()
    date = re.search(r"^# date: (.*)$", committed, re.M).group(1)
    # The committed file names its regions (three: each costs moto ~3 s to serialise 1,395 types).
    regions = re.search(r"^# source: .*regions ([a-z0-9,-]+) merged", committed, re.M).group(1).split(",")
    assert len(regions) >= 2, "several regions merged"
    out = tmp_path / "instance_memory.txt"
    args = ["refresh-types", "--output", str(out), "--date", date, "--note", SEED_NOTE]
    for r in regions:
        args += ["--region", r]
    with mock_aws():
        rc = main(args)
    assert rc == 0
    assert out.read_text() == committed
    printed = capsys.readouterr().out
    assert f"wrote 1395 instance types from {len(regions)} region(s)" in printed
    assert "added 1395" in printed  # the output did not exist before


def test_supplement_only_adds_names_the_generated_file_lacks_and_cites_a_source():
    generated = im.parse_data_file(GENERATED.read_text()).entries
    extra = im.parse_data_file(EXTRA.read_text())
    assert extra.entries, "the supplement is empty"
    assert set(extra.entries).isdisjoint(generated), "a supplement line shadowed by the API figure is dead"
    assert set(extra.notes) == set(extra.entries), "every supplement line must name its source"
    assert im.table_info().extra_count == len(extra.entries)


def test_report_types_in_botocore_model_that_the_table_lacks():
    enum = botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType").enum
    missing = sorted(set(enum) - set(im.all_types()))
    if missing:
        warnings.warn(
            f"{len(missing)} EC2 instance types (botocore model) lack a memory figure: {missing}",
            stacklevel=1,
        )
    # 42 were missing from moto's data; the supplement sources 34 of them. A regression (a refresh that
    # drops types, a broken supplement) pushes this up.
    assert len(missing) <= 8, missing


# ------------------------------------------------------------------- data-file format (property tests)

type_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,8}\.[a-z0-9][a-z0-9-]{0,10}\Z")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(type_names, st.integers(min_value=1, max_value=2**40), max_size=30),
       st.dates().map(lambda d: d.isoformat()))
def test_render_then_parse_round_trips(entries, date):
    text = im.render_data_file(entries, source="unit test", date=date)
    parsed = im.parse_data_file(text)
    assert dict(parsed.entries) == entries
    assert parsed.header["count"] == str(len(entries))
    assert parsed.header["date"] == date
    assert list(parsed.entries) == sorted(parsed.entries, key=lambda n: tuple(n.partition(".")[::2]))


@pytest.mark.parametrize(
    "body, match",
    [
        ("m5.large 0\n", "positive"),
        ("m5.large -1\n", "positive"),
        ("m5.large 8.5\n", "positive"),
        ("m5.large\n", "expected"),
        ("M5.large 8192\n", "not an instance type"),
        ("m5.large 8192\nm5.large 8192\n", "duplicate"),
        ("# count: 2\nm5.large 8192\n", "count"),
    ],
)
def test_bad_data_lines_raise_naming_the_line(body, match):
    with pytest.raises(ValueError, match=match):
        im.parse_data_file(body, name="x.txt")


def test_render_rejects_bad_entries():
    with pytest.raises(ValueError):
        im.render_data_file({"m5.large": 0}, source="s", date="d")
    with pytest.raises(ValueError):
        im.render_data_file({"m5.large": True}, source="s", date="d")
    with pytest.raises(ValueError):
        im.render_data_file({"m5.large": 1}, source="two\nlines", date="d")
