import json
import os
import tempfile
import time

import pytest

# Tests synthesize many small apps: skip the 4-10 s built-in validator per process (cfn-lint checks
# templates instead) and the Node end-of-life banner.
os.environ.setdefault("CDK_VALIDATION", "false")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO


@pytest.fixture
def dummy_aws(monkeypatch):
    """Dummy credentials for moto, and nothing from the developer's own AWS set-up."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)


# -- Scheduling for `make test` (pytest-xdist, -n 3 --dist loadscope) ----------------------------------------
#
# The qemu boots go in two groups of about equal boot time, each group on a worker of its own, handed out
# before anything else: two guests boot at a time from the start of the run. Every other module is a unit of
# its own (as loadscope does): the third worker takes them one module at a time, so a module's fixtures are
# built once and the pure-Python tests never wait behind a boot; the boot workers join in when their boots
# are done. Without xdist (`pytest tests/test_x.py`) none of this applies and every test runs as before.
#
# The groups are read from the node id (the scheduler runs in the controller, which sees node ids only; and
# xdist 3.8's own xdist_group marks do not reach node ids under pytest 9). A module-scoped boot (or chain of
# boots) must stay within one group, since each worker boots its own copy of a fixture. The README's "what
# each boot proves" lists the boots.
BOOT_MODULES = ("test_e2e_scenarios.py", "test_e2e_ssm.py", "test_e2e_carriers.py")
BOOT_GROUPS = {
    "boots-1": "bookworm: the scenarios, the mixed group, the SSM machine, Karpenter",
    "boots-2": "trixie: the scenarios, the SSM machine; bookworm: Image Builder",
}


def schedule_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: a boot group for the modules that boot, else its module."""
    path = nodeid.split("::", 1)[0]
    if os.path.basename(path) not in BOOT_MODULES:
        return path
    return "boots-2" if "[trixie]" in nodeid or "::test_image_builder_" in nodeid else "boots-1"


def pytest_collection_modifyitems(config, items):
    """A test that boots lives in a module the scheduler knows (else its boots would not get a worker of their
    own, and could be booted twice)."""
    stray = sorted({item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("e2e")
                    and os.path.basename(item.nodeid.split("::", 1)[0]) not in BOOT_MODULES})
    if stray:
        raise pytest.UsageError(f"e2e tests outside BOOT_MODULES (tests/conftest.py): {', '.join(stray)}")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BootGroupsFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return schedule_unit(nodeid)

        def _assign_work_unit(self, node):
            for unit in [u for u in self.workqueue if u in BOOT_GROUPS]:
                self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return BootGroupsFirst(config, log)


# -- The boots of this run, counted for the CI log -----------------------------------------------------------
# e2e/vm.py appends one line per qemu run to $E2E_BOOT_LOG; set here, before xdist starts its workers, so
# every worker writes to the same file.
if "E2E_BOOT_LOG" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["E2E_BOOT_LOG"] = os.path.join(tempfile.gettempdir(), f"e2e-boots-{os.getpid()}.jsonl")
_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter, config):
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    path = os.environ.get("E2E_BOOT_LOG", "")
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    if not runs:
        return
    write = terminalreporter.write_line
    write("")
    for suite in sorted({r["suite"] for r in runs}):
        mine = [r for r in runs if r["suite"] == suite]
        write(f"e2e {suite}: {len(mine)} qemu runs, {sum(r['boots'] for r in mine)} boots, "
              f"{sum(r['seconds'] for r in mine):.0f} s of qemu")
    write(f"e2e: {len(runs)} qemu runs, {sum(r['boots'] for r in runs)} boots in all; "
          f"{time.monotonic() - _STARTED:.0f} s since the test session started")
    for r in runs:
        write(f"  {r['suite']} {r['variant']} {r['run']}: {r['boots']} boot(s), {r['seconds']} s")
