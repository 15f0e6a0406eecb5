"""How `make test` hands the tests to its pytest-xdist workers (tests/conftest.py): each module-scoped
boot, or chain of boots on one disk, stays in one boot group (a worker boots its own copy of a fixture),
the two groups split the boots, and every other module is a unit of its own. No VM is booted here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import conftest

TESTS = Path(__file__).parent


def _test_names(module: str) -> list:
    tree = ast.parse((TESTS / module).read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


@pytest.mark.parametrize("module", ["test_e2e_scenarios.py", "test_e2e_ssm.py"])  # both suites, by parameter
def test_each_suite_of_a_boot_module_lands_in_one_group(module):
    names = _test_names(module)
    assert names, module
    for suite, group in (("bookworm", "boots-1"), ("trixie", "boots-2")):
        units = {conftest.schedule_unit(f"tests/{module}::{name}[{suite}]") for name in names}
        assert units == {group}, (module, suite, units)


def test_carriers_split_between_the_groups_by_fixture():
    names = _test_names("test_e2e_carriers.py")
    units = {name: conftest.schedule_unit(f"tests/test_e2e_carriers.py::{name}") for name in names}
    assert {u for n, u in units.items() if n.startswith("test_karpenter_")} == {"boots-1"}
    assert {u for n, u in units.items() if n.startswith("test_image_builder_")} == {"boots-2"}
    assert set(units.values()) <= set(conftest.BOOT_GROUPS)
    # and every test of the module uses the fixture its name says (so the split cannot cut a fixture in two)
    source = (TESTS / "test_e2e_carriers.py").read_text()
    for name in names:
        fixture = "image_builder" if name.startswith("test_image_builder_") else "karpenter"
        assert f"def {name}({fixture})" in source, name


def test_the_mixed_group_boots_with_the_bookworm_scenarios():
    mixed = "tests/test_e2e_scenarios.py::test_mixed_group_each_machine_sizes_itself_from_its_memtotal"
    assert conftest.schedule_unit(mixed) == "boots-1"


def test_other_modules_are_units_of_their_own():
    policy = "tests/test_policy.py::test_documented_examples[512-512]"
    assert conftest.schedule_unit(policy) == "tests/test_policy.py"
    assert conftest.schedule_unit("tests/test_e2e_vm.py::test_x") == "tests/test_e2e_vm.py"
    for module in conftest.BOOT_MODULES:
        assert (TESTS / module).exists(), module
