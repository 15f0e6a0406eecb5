"""The release as a user gets it: the sdist and wheel `make dist` builds, the wheel installed into a fresh
venv outside the repository, and an app synthesized there with it.

The sdist and wheel are built once for the module, the way `make dist` builds them (sdist, then the wheel
from the sdist, with the pinned setuptools). The venv gets the wheel alone (``--no-deps``, no index); the
CDK it synthesizes with comes from this test run's own environment through a ``.pth`` line that puts that
environment's site-packages directory on the venv's path. Its own ``.pth`` files (among them the editable
install's, which points at the checkout) are not read that way, so the checkout stays out of reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from cdk_audit_backlog import user_data
from cdk_audit_backlog.user_data import BLOCK_BEGIN, SCRIPT_NAME

pytestmark = pytest.mark.release

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import check_dist  # noqa: E402  (what `make dist` runs on dist/)

SCRIPT_IN_WHEEL = f"cdk_audit_backlog/userdata/{SCRIPT_NAME}"
DATA_IN_WHEEL = "cdk_audit_backlog/data/instance_memory.txt"

# Two launch templates: an m5.large (8 GiB) and a t3.micro (1 GiB), sized from the wheel's memory table.
# The audit hook records every file the package opens, so the test sees where script and table came from.
APP = textwrap.dedent(
    """
    import json, sys
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    import cdk_audit_backlog
    from cdk_audit_backlog import AuditBacklog
    app = cdk.App()
    stack = cdk.Stack(app, "Tiny")
    for name, instance_type in (("LT", "m5.large"), ("Micro", "t3.micro")):
        data = ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(instance_type=instance_type)
        ec2.CfnLaunchTemplate(stack, name, launch_template_data=data)
    AuditBacklog.apply_to(app)
    resources = app.synth().get_stack_by_name("Tiny").template["Resources"]
    print(json.dumps({
        "package": cdk_audit_backlog.__file__,
        "opened": [p for p in opened if "cdk_audit_backlog" in p or "audit-backlog" in p],
        "user_data": {name: resources[name]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
                      for name in ("LT", "Micro")},
    }))
    """
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--quiet", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (found,) = dist.glob("cdk_audit_backlog-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv outside the repository with the wheel installed; returns its python."""
    root = tmp_path_factory.mktemp("venv")
    assert REPO not in root.parents
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300,
    )
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "test-environment-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, venv) -> dict:
    """The app above, run by the venv's python from a directory outside the repository."""
    work = tmp_path_factory.mktemp("app")
    assert REPO not in work.parents
    (work / "tiny_app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(venv.parent) + os.pathsep + env["PATH"]  # jsii's node runs the app's children
    env["CDK_OUTDIR"] = str(work / "cdk.out")
    result = subprocess.run([str(venv), "tiny_app.py"], cwd=work, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    found["site_packages"] = subprocess.check_output(
        [str(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    return found


def test_make_dist_check_passes_on_the_built_sdist_and_wheel(dist):
    assert check_dist.check(dist) == []
    names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    for required in ("cdk_audit_backlog/__init__.py", "cdk_audit_backlog/py.typed", DATA_IN_WHEEL,
                     "cdk_audit_backlog/data/instance_memory_extra.txt", SCRIPT_IN_WHEEL):
        assert required in names


def test_every_file_in_userdata_is_in_the_wheel(wheel):
    """Every file the renderer can read from userdata/, today's script and any added later."""
    shipped = set(zipfile.ZipFile(wheel).namelist())
    files = [p for p in (REPO / "userdata").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert f"cdk_audit_backlog/userdata/{path.relative_to(REPO / 'userdata').as_posix()}" in shipped


def test_the_dist_check_can_fail(dist, tmp_path):
    """A wheel without the boot script, and one with a changed data file, are both reported."""
    for dropped, changed in ((SCRIPT_IN_WHEEL, None), (None, DATA_IN_WHEEL)):
        bad = tmp_path / ("dropped" if dropped else "changed")
        bad.mkdir()
        shutil.copy(next(dist.glob("*.tar.gz")), bad)
        wheel = next(dist.glob("*.whl"))
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad / wheel.name, "w") as dst:
            for item in src.infolist():
                if item.filename != dropped:
                    data = src.read(item)
                    dst.writestr(item, data + b"t9.fake 1\n" if item.filename == changed else data)
        problems = check_dist.check(bad)
        expected = f"missing {dropped}" if dropped else f"differs from the checkout: {changed}"
        assert [p.split(": ", 1)[1] for p in problems] == [expected.replace("cdk_audit_backlog/", "")]


def test_the_package_is_imported_from_the_venv_not_the_checkout(synthesized):
    package = Path(synthesized["package"])
    assert "site-packages" in str(package)
    assert package.parent == Path(synthesized["site_packages"]) / "cdk_audit_backlog"
    assert REPO not in package.parents


def test_the_boot_script_and_the_memory_table_are_read_from_the_wheel(synthesized):
    installed = Path(synthesized["site_packages"]) / "cdk_audit_backlog"
    opened = [Path(p) for p in synthesized["opened"]]
    assert installed / "userdata" / SCRIPT_NAME in opened
    assert installed / "data" / "instance_memory.txt" in opened
    assert not [p for p in opened if REPO in p.parents]


def test_the_synthesized_block_is_the_wheels_script(synthesized, wheel, monkeypatch):
    """The block in the user data is the one the renderer makes of the script inside the wheel."""
    shipped = zipfile.ZipFile(wheel).read(SCRIPT_IN_WHEEL).decode("utf-8")
    monkeypatch.setattr(user_data, "script_text", lambda: shipped)
    compact = user_data._compact_body.__wrapped__  # not the cache, which holds the checkout's script
    for name, user_data_text in synthesized["user_data"].items():
        block = user_data_text[user_data_text.index(BLOCK_BEGIN):]
        lines = block.splitlines(keepends=True)
        # begin marker, run line, the CAB_* inputs, then the body up to the here-document's end
        body_start = next(i for i, line in enumerate(lines) if i > 1 and not line.startswith("CAB_"))
        body = "".join(lines[body_start:-2])
        features = {"auto", "unit"}  # the aspect's default: boot unit in auto mode
        assert body == compact(frozenset(features)), name


def test_the_limits_come_from_the_wheels_memory_table(synthesized):
    """The example's own assertions (moved here from test_example_app.py) plus the t3.micro's limit."""
    m5, micro = synthesized["user_data"]["LT"], synthesized["user_data"]["Micro"]
    assert m5.startswith("#!/bin/bash\n# >>> cdk-audit-backlog >>>\n")
    assert "CAB_TARGET=8192" in m5 and 'cab_main "$@" </dev/null' in m5
    assert "CAB_TARGET=1024\n" in micro and "CAB_SOURCE=t3.micro/1024MiB\n" in micro
