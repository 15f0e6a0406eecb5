"""AuditBacklogComponent: an Image Builder component document that installs the boot unit."""

import copy
import json
import os
import re
import base64
import gzip
import subprocess
from pathlib import Path

import aws_cdk as cdk
import pytest
import yaml
from aws_cdk import aws_imagebuilder as imagebuilder
from aws_cdk.assertions import Match, Template

from cdk_audit_backlog import BacklogPolicy
from cdk_audit_backlog import image_builder
from cdk_audit_backlog.image_builder import (
    BUILD_SCRIPT,
    COMPONENT_DATA_LIMIT,
    TEST_SCRIPT,
    VALIDATE_SCRIPT,
    AuditBacklogComponent,
    build_script,
    check_component_document,
    component_script,
)
from cdk_audit_backlog.user_data import script_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFN_LINT = os.path.join(ROOT, ".venv", "bin", "cfn-lint")
SHELLCHECK = os.path.join(ROOT, ".venv", "bin", "shellcheck")


def build_stack(**options):
    app = cdk.App()
    stack = cdk.Stack(app, "Golden", env=cdk.Environment(account="123456789012", region="us-east-1"))
    component = AuditBacklogComponent(stack, "AuditBacklog", **options)
    imagebuilder.CfnImageRecipe(
        stack,
        "Recipe",
        name="golden-al2023",
        version="1.0.0",
        parent_image="arn:aws:imagebuilder:us-east-1:aws:image/amazon-linux-2023-x86/x.x.x",
        components=[
            imagebuilder.CfnImageRecipe.ComponentConfigurationProperty(
                component_arn="arn:aws:imagebuilder:us-east-1:aws:component/update-linux/x.x.x"
            ),
            component.recipe_component(BacklogLimit="16384"),
        ],
    )
    return app, stack, component


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    app, stack, component = build_stack()
    template = Template.from_stack(stack)
    return stack, component, template


def document_of(template):
    (resource,) = template.find_resources("AWS::ImageBuilder::Component").values()
    return resource["Properties"]["Data"], yaml.safe_load(resource["Properties"]["Data"])


def steps(document, phase):
    (found,) = [p for p in document["phases"] if p["name"] == phase]
    return {s["name"]: s for s in found["steps"]}


def test_component_is_a_linux_component_with_the_document_inline(synthesized):
    _, component, template = synthesized
    template.has_resource_properties(
        "AWS::ImageBuilder::Component",
        {"Name": "cdk-audit-backlog", "Platform": "Linux", "Version": "1.1.0", "Data": component.document},
    )


def test_recipe_references_the_component_arn_with_a_parameter_override(synthesized):
    stack, _, template = synthesized
    logical_id = stack.get_logical_id(stack.node.find_child("AuditBacklog").component)
    template.has_resource_properties(
        "AWS::ImageBuilder::ImageRecipe",
        {
            "Components": Match.array_with(
                [
                    {
                        "ComponentArn": {"Fn::GetAtt": [logical_id, "Arn"]},
                        "Parameters": [{"Name": "BacklogLimit", "Value": ["16384"]}],
                    }
                ]
            )
        },
    )


def test_document_passes_the_public_schema_checks_and_fits_inline(synthesized, capsys):
    _, component, template = synthesized
    data, document = document_of(template)
    assert check_component_document(document) == []
    assert [p["name"] for p in document["phases"]] == ["build", "validate", "test"]
    assert len(data) <= COMPONENT_DATA_LIMIT
    with capsys.disabled():
        print(
            f"\ncomponent document: {len(data)} characters ({len(data.encode())} bytes) of "
            f"{COMPONENT_DATA_LIMIT}"
        )


def test_parameters_are_typed_strings_with_the_options_as_defaults():
    _, _, component = build_stack(
        backlog_limit=65536, policy=BacklogPolicy(memory_fraction=0.02, minimum=1024, maximum=131072),
        backlog_wait_time=15000, allow_lower=True,
    )
    document = yaml.safe_load(component.document)
    params = {name: spec for entry in document["parameters"] for name, spec in entry.items()}
    assert {n: s["default"] for n, s in params.items()} == {
        "BacklogLimit": "65536", "MemoryFractionPpm": "20000", "MinimumLimit": "1024",
        "MaximumLimit": "131072", "BacklogWaitTime": "15000", "AllowLower": "true",
    }
    assert all(s["type"] == "string" and s["description"] for s in params.values())


def test_build_phase_installs_the_rendered_script_never_a_copy(synthesized):
    _, _, template = synthesized
    _, document = document_of(template)
    build = steps(document, "build")
    files = {f["path"]: f["content"] for f in build["WriteInputsAndScript"]["inputs"]}
    script = files["/var/tmp/cdk-audit-backlog.sh"]
    assert script == component_script()
    # Its lines are the shipped script's statement lines, in order (comments, blank lines and the
    # optional parts an image does not use are left out, as in the user-data block).
    shipped = iter(line.strip() for line in script_text().splitlines())
    assert all(line in shipped for line in script.splitlines()[1:])
    assert "cab_main" in script and 'CAB_TARGET="${CAB_TARGET:-auto}"' in script
    assert "{{" not in script  # Image Builder would substitute inside it
    inputs = files["/var/tmp/cdk-audit-backlog.inputs"]
    assert inputs.splitlines()[0] == "CAB_TARGET={{ BacklogLimit }}"
    (commands,) = build["InstallBootUnit"]["inputs"]["commands"]
    assert "/bin/bash /var/tmp/cdk-audit-backlog.sh install" in commands


@pytest.mark.parametrize(
    "phase, step, script",
    [("build", "InstallBootUnit", BUILD_SCRIPT), ("validate", "CheckUnitAndRules", VALIDATE_SCRIPT),
     ("test", "CheckKernelLimit", TEST_SCRIPT)],
)
def test_each_bash_step_is_its_shipped_script_as_a_literal_block(synthesized, phase, step, script):
    """The document is written by PyYAML: each ExecuteBash step is one file of userdata/ as it is, written
    as a literal block (readable in the console, no escapes), and the document reads back with safe_load."""
    _, _, template = synthesized
    data, document = document_of(template)
    shipped = (Path(ROOT) / "userdata" / script).read_text()
    assert steps(document, phase)[step]["inputs"]["commands"] == [shipped]
    block = "".join(("              " + line if line else "") + "\n" for line in shipped.splitlines())
    assert "commands:\n            - |\n" + block in data


def test_build_phase_runs_the_boot_script_from_audit_backlog_sh(synthesized):
    """The one boot script: CreateFile writes userdata/audit-backlog.sh (as component_script renders it),
    and the build step runs exactly that file, then the copy its install mode made."""
    _, _, template = synthesized
    _, document = document_of(template)
    build = steps(document, "build")
    files = build["WriteInputsAndScript"]["inputs"]
    (script,) = [f for f in files if f["path"] == "/var/tmp/cdk-audit-backlog.sh"]
    assert script["content"] == component_script() and "cab_main" in script["content"]
    (commands,) = build["InstallBootUnit"]["inputs"]["commands"]
    runs = [line for line in commands.splitlines() if line.startswith("/bin/bash ")]
    assert runs == ["/bin/bash /var/tmp/cdk-audit-backlog.sh install",
                    "/bin/bash /usr/local/sbin/cdk-audit-backlog boot"]


def test_text_a_literal_block_cannot_hold_is_refused_not_quoted():
    document = {"commands": ["echo hi \nexit 0\n"]}  # a trailing space: PyYAML would quote the whole script
    with pytest.raises(ValueError, match="literal block"):
        yaml.dump(document, Dumper=image_builder._ComponentDumper)
    assert yaml.dump({"commands": ["echo hi\nexit 0\n"]}, Dumper=image_builder._ComponentDumper) == (
        "commands:\n  - |\n    echo hi\n    exit 0\n"
    )


def test_build_script_checks_the_patterns_the_component_declares(tmp_path):
    """bash itself reads the build script's checks: the same names and patterns, in the same order, as the
    parameters the document declares (and recipe overrides are checked against)."""
    script = (Path(ROOT) / "userdata" / BUILD_SCRIPT).read_text()
    (line,) = [text for text in script.splitlines() if text.startswith("checks=(")]
    printed = line + '\nprintf "%s\\n" "${checks[@]}"'
    r = subprocess.run(["bash", "-c", printed], capture_output=True, text=True, check=True)
    declared = [f"{var}={pattern}" for var, pattern, _ in image_builder._PARAMETERS.values()]
    assert r.stdout.splitlines() == declared


def test_a_build_script_out_of_step_with_the_parameters_is_refused(monkeypatch):
    parameters = dict(image_builder._PARAMETERS)
    var, _, about = parameters["MinimumLimit"]
    monkeypatch.setitem(image_builder._PARAMETERS, "MinimumLimit", (var, "[0-9]+", about))
    with pytest.raises(RuntimeError, match="checks=\\("):
        build_script()


@pytest.mark.parametrize("phase", ["build", "validate", "test"])
def test_every_bash_step_passes_bash_n_and_shellcheck(synthesized, phase, tmp_path):
    _, _, template = synthesized
    _, document = document_of(template)
    for name, step in steps(document, phase).items():
        if step["action"] != "ExecuteBash":
            continue
        path = tmp_path / f"{name}.sh"
        path.write_text("#!/bin/bash\n" + "\n".join(step["inputs"]["commands"]))
        subprocess.run(["bash", "-n", str(path)], check=True)
        r = subprocess.run([SHELLCHECK, "-S", "style", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_installed_script_passes_bash_n_and_shellcheck(tmp_path):
    path = tmp_path / "cdk-audit-backlog.sh"
    path.write_text(component_script())
    subprocess.run(["bash", "-n", str(path)], check=True)
    # As for the block: comments, so the script's in-place `# shellcheck disable=` directives, are not
    # rendered; exactly those checks are excluded.
    excluded = sorted(set(re.findall(r"#\s*shellcheck disable=(SC[0-9]+)", script_text())))
    r = subprocess.run(
        [SHELLCHECK, "-S", "style", "-e", ",".join(excluded), str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


BAD_VALUES = {
    "BacklogLimit": ["0", "auto; reboot", "1e9", "$(id)", "12345678901"],
    "MemoryFractionPpm": ["0", "250001", "-1"],
    "MinimumLimit": ["0", "x"],
    "BacklogWaitTime": ["60001", "-5", "' ; id #"],
    "AllowLower": ["yes", "1"],
}


def run_parameter_check(tmp_path, values):
    """The build step's parameter check, taken from the document, on an inputs file as CreateFile
    would write it with ``values`` substituted; the install commands are cut off after the check."""
    _, _, component = build_stack()
    document = yaml.safe_load(component.document)
    build = steps(document, "build")
    files = {f["path"]: f["content"] for f in build["WriteInputsAndScript"]["inputs"]}
    content = files["/var/tmp/cdk-audit-backlog.inputs"]
    for name, value in values.items():
        content = content.replace("{{ " + name + " }}", value)
    inputs = tmp_path / "inputs"
    inputs.write_text(content)
    (commands,) = build["InstallBootUnit"]["inputs"]["commands"]
    check = commands.split("CAB_UNIT=auto", 1)[0].replace("/var/tmp/cdk-audit-backlog.inputs", str(inputs))
    return subprocess.run(["bash", "-c", check + 'echo "OK $CAB_TARGET $CAB_WAIT $CAB_ALLOW_LOWER"'],
                          capture_output=True, text=True)


DEFAULTS = {"BacklogLimit": "auto", "MemoryFractionPpm": "10000", "MinimumLimit": "320",
            "MaximumLimit": "262144", "BacklogWaitTime": "none", "AllowLower": "false"}


def test_build_accepts_the_default_parameters(tmp_path):
    r = run_parameter_check(tmp_path, DEFAULTS)
    assert r.returncode == 0 and r.stdout.strip() == "OK auto  0", r.stdout + r.stderr


@pytest.mark.parametrize("name, bad", [(n, v) for n, vs in BAD_VALUES.items() for v in vs])
def test_build_refuses_a_bad_parameter_before_any_shell_sees_it(tmp_path, name, bad):
    r = run_parameter_check(tmp_path, {**DEFAULTS, name: bad})
    assert r.returncode == 1 and "cdk-audit-backlog: build:" in r.stdout and "OK" not in r.stdout, r.stdout


def test_build_refuses_minimum_above_maximum_and_multi_line_values(tmp_path):
    r = run_parameter_check(tmp_path, {**DEFAULTS, "MinimumLimit": "4096", "MaximumLimit": "1024"})
    assert r.returncode == 1 and "out of range" in r.stdout
    r = run_parameter_check(tmp_path, {**DEFAULTS, "BacklogLimit": "auto\nCAB_UNIT=off"})
    assert r.returncode == 1 and "unexpected lines" in r.stdout


def test_template_is_cfn_lint_clean(tmp_path):
    app, stack, _ = build_stack()
    template = app.synth().get_stack_by_name(stack.stack_name).template
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(template))
    r = subprocess.run([CFN_LINT, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_document_snapshot(snapshot):
    """The document's shape; the installed script is summarized (its text is tested above and changes
    with the script)."""
    _, _, component = build_stack()
    document = yaml.safe_load(component.document)
    for f in steps(document, "build")["WriteInputsAndScript"]["inputs"]:
        if f["path"].endswith(".sh"):
            f["content"] = "<component_script()>"
    assert document == snapshot


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda d: d.update(schemaVersion=2.0), "schemaVersion"),
        (lambda d: d["phases"][0].update(name="install"), "phase name"),
        (lambda d: d["phases"][1]["steps"].append(copy.deepcopy(d["phases"][1]["steps"][0])), "not unique"),
        (lambda d: d["phases"][2]["steps"][0].update(action="RunShell"), "unknown action"),
        (lambda d: d["phases"][2]["steps"][0]["inputs"].update(commands="echo"), "list of strings"),
        (lambda d: d["parameters"][0]["BacklogLimit"].update(type="integer"), "type must be string"),
        (lambda d: d["parameters"].pop(0), "undeclared parameter 'BacklogLimit'"),
        (lambda d: d.update(steps=[]), "unknown top-level key"),
        (lambda d: d["phases"][0]["steps"][0].update(name="write inputs"), "alphanumeric name"),
    ],
)
def test_schema_checks_can_fail(mutate, problem):
    _, _, component = build_stack()
    document = yaml.safe_load(component.document)
    mutate(document)
    assert any(problem in p for p in check_component_document(document)), check_component_document(document)


@pytest.mark.parametrize(
    "options, option",
    [
        ({"component_name": "a"}, "component_name"),
        ({"component_name": "bad/name"}, "component_name"),
        ({"version": "1.0"}, "version"),
        ({"version": "01.0.0"}, "version"),
        ({"backlog_limit": 0}, "backlog_limit"),
        ({"policy": {"memory_fraction": 0.01}}, "policy"),
        ({"backlog_wait_time": 60001}, "backlog_wait_time"),
        ({"allow_lower": "no"}, "allow_lower"),
        ({"supported_os_versions": "Amazon Linux 2023"}, "supported_os_versions"),
        ({"description": ""}, "description"),
    ],
)
def test_bad_options_name_the_option(options, option):
    with pytest.raises(ValueError, match=option):
        build_stack(**options)


@pytest.mark.parametrize(
    "overrides, message",
    [({"Limit": "1"}, "unknown component parameter"), ({"BacklogLimit": "0"}, "BacklogLimit must match")],
)
def test_recipe_overrides_are_checked(overrides, message):
    _, _, component = build_stack()
    with pytest.raises(ValueError, match=message):
        component.recipe_component(**overrides)


# -- the build phase, run on fixture roots ------------------------------------------------------------

from tests.boot import fakes  # noqa: E402
from tests.boot import fixtures as fx  # noqa: E402

PATHS = (
    "/var/tmp/cdk-audit-backlog.inputs",
    "/var/tmp/cdk-audit-backlog.sh",
    "/usr/local/sbin/cdk-audit-backlog",
)


def run_build_phase(root, sandbox, document, values=DEFAULTS):
    """The build phase as Image Builder runs it, on a fixture: each CreateFile entry written (parameters
    substituted), then the ExecuteBash commands, with the document's absolute paths moved under the root."""
    build = steps(document, "build")
    for f in build["WriteInputsAndScript"]["inputs"]:
        content = f["content"]
        for name, value in values.items():
            content = content.replace("{{ " + name + " }}", value)
        path = root / f["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (commands,) = build["InstallBootUnit"]["inputs"]["commands"]
    for p in PATHS:
        commands = commands.replace(p, str(root) + p)
    return subprocess.run(["bash", "-c", commands], env=fx.script_env(root, sandbox), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def set_mem(root, kib):
    (root / "proc/meminfo").write_text(f"MemTotal:       {kib} kB\n")


def unit_boot(root, sandbox):
    """What systemd runs at boot: the unit's ExecStart, then auditd's start (the fakes' boot)."""
    unit = (root / "etc/systemd/system/cdk-audit-backlog.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = exec_start.split()
    argv = [str(root) + a if a.startswith("/usr/local/") else a for a in argv]
    r = subprocess.run(argv, env=fx.script_env(root, sandbox), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return fakes.boot(root)["backlog_limit"], r.stdout


@pytest.mark.parametrize("layout, shipped", [("al2", 320), ("debian12", 8192), ("al2023-fedora-file", 64)])
def test_build_phase_installs_a_unit_that_follows_memory_at_every_boot(tmp_path, layout, shipped):
    """No user data at all: the image's build phase installs the unit; later boots with 1 GiB, 8 GiB and
    1 GiB again get 1024, 8192, 1024 (Debian's shipped 8192 is never lowered)."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, layout)
    _, _, component = build_stack()
    r = run_build_phase(root, sandbox, yaml.safe_load(component.document))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        not (root / "var/tmp/cdk-audit-backlog.sh").exists()
        and not (root / "var/tmp/cdk-audit-backlog.inputs").exists()
    )
    for wants in ("auditd", "audit-rules"):
        assert (root / f"etc/systemd/system/{wants}.service.wants/cdk-audit-backlog.service").is_symlink()
    assert "CAB_TARGET=auto" in (root / "etc/cdk-audit-backlog.env").read_text()
    seen = []
    for kib in (1000000, 8006068, 1000000):  # MemTotal of 1 GiB and 8 GiB instances
        set_mem(root, kib)
        seen.append(unit_boot(root, sandbox)[0])
    expected = [max(shipped, limit) for limit in (1024, 8192, 1024)]
    assert seen == expected


def test_build_phase_with_a_fixed_limit_keeps_it_across_memory_sizes(tmp_path):
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, "al2")
    _, _, component = build_stack()
    r = run_build_phase(
        root, sandbox, yaml.safe_load(component.document), {**DEFAULTS, "BacklogLimit": "16384"}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for kib in (1000000, 8006068):
        set_mem(root, kib)
        assert unit_boot(root, sandbox)[0] == 16384


def test_build_phase_with_monitor_interval_installs_the_sampler(tmp_path):
    """monitor_interval is baked into the installed script (the CAB_MONITOR default); the build's install
    mode installs the sampler's timer next to the boot unit, and the env file carries the interval."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, "al2")
    _, _, component = build_stack(monitor_interval=300)
    assert component.tuning.monitor_interval == 300
    packed = component_script(300)
    assert len(component.document) <= 16000 and packed.startswith("#!/bin/bash\n")
    b64 = packed.splitlines()[-1].split("'")[1]
    script = gzip.decompress(base64.b64decode(b64)).decode()
    assert 'CAB_MONITOR="${CAB_MONITOR:-300}"' in script.splitlines() and "cab_sample()" in script
    # without the option the component's script is the one it was before the sampler
    assert "CAB_MONITOR" not in component_script() and "cab_sample" not in component_script()
    r = run_build_phase(root, sandbox, yaml.safe_load(component.document))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cdk-audit-backlog: monitor: sampler every 300s installed" in r.stdout.splitlines()
    wants = root / "etc/systemd/system/timers.target.wants/cdk-audit-backlog-sample.timer"
    assert wants.is_symlink()
    # the installed copy (the packed file) runs the boot unit and the sampler as the plain script would
    copy = root / "usr/local/sbin/cdk-audit-backlog"
    assert copy.read_text() == packed
    k, out = unit_boot(root, sandbox)
    assert "backlog_limit" in out
    env = {**fx.script_env(root, sandbox), "CAB_STATSD": "127.0.0.1:9"}
    r = subprocess.run(["bash", str(copy), "sample"], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "AuditBacklogLimit:%d|g" % k in r.stdout.splitlines(), r.stdout + r.stderr
    assert "CAB_MONITOR=300" in (root / "etc/cdk-audit-backlog.env").read_text().splitlines()
    with pytest.raises(ValueError, match="monitor_interval"):
        build_stack(monitor_interval=3601)
