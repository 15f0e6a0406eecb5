"""Karpenter EC2NodeClass userData: MIME (AL2023, AL2) and TOML (Bottlerocket), our part where stated."""

import email
import email.policy
import json
import os
import subprocess
import tomllib

import aws_cdk as cdk
import pytest
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_lambda as lambda_

from cdk_audit_backlog import BacklogPolicy
from cdk_audit_backlog.karpenter import karpenter_user_data
from cdk_audit_backlog.testing import block_settings, shell_parts
from cdk_audit_backlog.user_data import BLOCK_BEGIN, BLOCK_END
from tests.boot import fixtures as fx

SHELLCHECK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "shellcheck"
)

# Karpenter's AL2023 example: a NodeConfig part and a shell part of the user's own.
USER_MIME = (
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="//"\n'
    "\n"
    "--//\n"
    "Content-Type: application/node.eks.aws\n"
    "\n"
    "apiVersion: node.eks.aws/v1alpha1\n"
    "kind: NodeConfig\n"
    "spec:\n"
    "  kubelet:\n"
    "    config:\n"
    "      maxPods: 42\n"
    "--//\n"
    'Content-Type: text/x-shellscript; charset="us-ascii"\n'
    "\n"
    "#!/bin/bash\n"
    'echo "Hello, AL2023!"\n'
    "--//--\n"
)


def parts(text):
    message = email.message_from_string(text, policy=email.policy.compat32)
    assert message.is_multipart(), text
    return message.get_payload()


@pytest.mark.parametrize("family", ["AL2023", "AL2"])
def test_shell_families_get_one_mime_part_running_the_block_in_auto_mode(family):
    text = karpenter_user_data(family)
    (ours,) = parts(text)
    assert ours.get_content_type() == "text/x-shellscript"
    script = ours.get_payload()
    assert script.startswith("#!/bin/bash\n" + BLOCK_BEGIN + "\n") and script.rstrip("\n").endswith(BLOCK_END)
    (settings,) = block_settings(text)
    assert settings["CAB_TARGET"] == "auto" and settings["CAB_SOURCE"] == "karpenter"


def test_a_fixed_limit_and_policy_reach_the_block():
    (settings,) = block_settings(
        karpenter_user_data(
            "AL2023", backlog_limit=16384, policy=BacklogPolicy(memory_fraction=0.02, minimum=1024)
        )
    )
    assert settings["CAB_TARGET"] == "16384"
    assert (settings["CAB_FRACTION_PPM"], settings["CAB_MIN"]) == ("20000", "1024")


def test_users_parts_are_kept_after_ours_byte_for_byte():
    text = karpenter_user_data("AL2023", user_data=USER_MIME)
    ours, node_config, hello = parts(text)
    assert ours.get_content_type() == "text/x-shellscript" and BLOCK_BEGIN in ours.get_payload()
    before = parts(USER_MIME)
    assert [node_config.as_string(), hello.as_string()] == [p.as_string() for p in before]
    assert "maxPods: 42" in node_config.get_payload()


def test_karpenters_al2023_merge_puts_its_node_config_first_then_ours_before_the_users_shell():
    """What the node receives: Karpenter's NodeConfig part, then the parts of our document in order
    (Karpenter's documented merge). cloud-init runs the shell parts in that order in its final stage;
    nodeadm-run starts the kubelet after cloud-final, so our part has run by then."""
    ours_doc = parts(karpenter_user_data("AL2023", user_data=USER_MIME))
    karpenter_node_config = email.message_from_string(
        "Content-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n"
    )
    received = [karpenter_node_config, *ours_doc]
    shell = [p for p in received if p.get_content_type() == "text/x-shellscript"]
    assert BLOCK_BEGIN in shell[0].get_payload() and "Hello, AL2023!" in shell[1].get_payload()


USER_SHELL = "#!/bin/bash\nset -e\necho 'first line of the user'\nexit 0\necho never\n"


@pytest.mark.parametrize("family", ["AL2023", "AL2"])
def test_a_users_shell_script_becomes_its_own_part_after_ours(family):
    """An EC2NodeClass's userData is most often a plain shell script: it is kept byte for byte as a
    text/x-shellscript part after ours (cloud-init runs the parts in order), not refused."""
    text = karpenter_user_data(family, user_data=USER_SHELL)
    ours, users = parts(text)
    assert BLOCK_BEGIN in ours.get_payload() and BLOCK_BEGIN not in users.get_payload()
    assert users.get_content_type() == "text/x-shellscript"
    assert users.get_payload() == USER_SHELL
    assert text.index(BLOCK_END) < text.index("first line of the user")
    (settings,) = block_settings(text)
    assert settings["CAB_SOURCE"] == "karpenter"


def test_a_users_shell_part_runs_after_ours_on_a_fixture(tmp_path):
    """Both parts as cloud-init runs them, in order: ours tunes the limit, then the user's script runs
    whole."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, "al2023-fedora-file", mem_kib=8006068)
    ours, users = shell_parts(karpenter_user_data("AL2023", user_data=USER_SHELL))
    first = fx.run_user_data(root, sandbox, ours)
    second = fx.run_user_data(root, sandbox, users)
    assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
    assert fx.kernel(root)["backlog_limit"] == 8192
    assert "first line of the user" in second.stdout and "never" not in second.stdout


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_data": "#!/usr/bin/python3\nprint(1)\n"},
        {"backlog_limit": 0},
        {"ami_family": "Windows2022"},
        {"ami_family": "Bottlerocket", "instance_types": []},
    ],
)
def test_every_error_names_the_function_not_another_construct(kwargs):
    kwargs = {"ami_family": "AL2023", **kwargs}
    with pytest.raises(ValueError) as raised:
        karpenter_user_data(kwargs.pop("ami_family"), **kwargs)
    message = str(raised.value)
    assert message.startswith("karpenter_user_data: "), message
    assert "node group" not in message and "launch template" not in message, message


@pytest.mark.parametrize("family", ["AL2023", "AL2"])
def test_shell_part_passes_bash_n_and_shellcheck(family, tmp_path):
    (script,) = shell_parts(karpenter_user_data(family))
    path = tmp_path / "part.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    # Style level like the block's own tests; SC2034 for inputs the rendered parts do not read.
    r = subprocess.run(
        [SHELLCHECK, "-S", "style", "-e", "SC2012,SC2034", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize(
    "layout, mem_kib, expected",
    [
        ("al2023-fedora-file", 8006068, 8192),
        ("al2023-fedora-file", 1990000, 2048),
        ("al2023-rhel-file", 1000000, 8192),
    ],
)
def test_al2023_shell_part_runs_on_the_al2023_fixtures(tmp_path, layout, mem_kib, expected):
    """The part itself, run as cloud-init runs it, on both candidate AL2023 rules layouts (which one AL2023
    ships is unverified): Fedora's file (kernel 64) is raised to MemTotal's limit; RHEL's 8192 on a small node
    is kept."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, layout, mem_kib=mem_kib)
    (script,) = shell_parts(karpenter_user_data("AL2023"))
    r = fx.run_user_data(root, sandbox, script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fx.kernel(root)["backlog_limit"] == expected, r.stdout
    assert f"-> {expected} (karpenter, MemTotal {mem_kib} kB" in r.stdout


def test_bottlerocket_gets_toml_with_the_smallest_types_limit():
    text = karpenter_user_data("Bottlerocket", instance_types=["m5.xlarge", "t3.medium", "r5.large"])
    assert tomllib.loads(text) == {
        "settings": {
            "boot": {"kernel-parameters": {"audit_backlog_limit": ["4096"]}, "reboot-to-reconcile": True}
        }
    }
    fixed = tomllib.loads(karpenter_user_data("Bottlerocket", backlog_limit=2048))
    assert fixed["settings"]["boot"]["kernel-parameters"]["audit_backlog_limit"] == ["2048"]


def test_bottlerocket_keeps_the_users_toml():
    user = '[settings.kubernetes]\n# labels\nnode-labels = { team = "a" }\n'
    text = karpenter_user_data("Bottlerocket", backlog_limit=8192, user_data=user)
    assert text.startswith(user)
    assert tomllib.loads(text)["settings"]["kubernetes"] == {"node-labels": {"team": "a"}}


@pytest.mark.parametrize(
    "args, kwargs, option",
    [
        (("Windows2022",), {}, "ami_family"),
        (("al2023",), {}, "ami_family"),
        (("Custom",), {}, "ami_family"),
        (("AL2023",), {"backlog_limit": 0}, "backlog_limit"),
        (("AL2023",), {"backlog_wait_time": 600001}, "backlog_wait_time"),
        (("AL2023",), {"policy": 0.01}, "policy"),
        (("AL2023",), {"install_auditd": "yes"}, "install_auditd"),
        (("AL2023",), {"user_data": b"#!/bin/bash"}, "user_data"),
        (("AL2023",), {"user_data": "#!/usr/bin/python3\nprint(1)\n"}, "user_data"),
        (("Bottlerocket",), {}, "backlog_limit or instance_types"),
        (("Bottlerocket",), {"instance_types": []}, "instance_types"),
        (("Bottlerocket",), {"instance_types": "m5.large"}, "instance_types"),
        (("Bottlerocket",), {"instance_types": ["m5.huge"]}, "instance_types"),
        (("Bottlerocket",), {"backlog_limit": 8192, "install_auditd": True}, "install_auditd"),
        (("Bottlerocket",), {"backlog_limit": 8192, "monitor_interval": 60}, "monitor_interval"),
        (("AL2023",), {"monitor_interval": 5}, "monitor_interval"),
        (("Bottlerocket",), {"backlog_limit": 8192, "user_data": "#!/bin/bash\n"}, "user_data"),
    ],
)
def test_bad_input_names_the_option(args, kwargs, option):
    with pytest.raises(ValueError, match=option):
        karpenter_user_data(*args, **kwargs)


def test_readme_recipe_puts_the_user_data_into_the_node_class_manifest():
    """The README's cluster.add_manifest recipe, synthesized: the manifest carries our text unchanged."""
    app = cdk.App()
    stack = cdk.Stack(app, "Karpenter", env=cdk.Environment(account="123456789012", region="us-east-1"))
    cluster = eks.Cluster(
        stack, "Cluster", version=eks.KubernetesVersion.V1_31,
        default_capacity_type=eks.DefaultCapacityType.NODEGROUP, default_capacity=0,
        # The README uses KubectlV31Layer (package aws-cdk.lambda-layer-kubectl-v31); any layer synthesizes.
        kubectl_provider_options=eks.KubectlProviderOptions(
            kubectl_layer=lambda_.LayerVersion.from_layer_version_arn(
                stack, "Kubectl", "arn:aws:lambda:us-east-1:123456789012:layer:kubectl:1"
            )
        ),
    )
    user_data = karpenter_user_data("AL2023")
    cluster.add_manifest(
        "AuditBacklogNodeClass",
        {
            "apiVersion": "karpenter.k8s.aws/v1",
            "kind": "EC2NodeClass",
            "metadata": {"name": "default"},
            "spec": {
                "amiSelectorTerms": [{"alias": "al2023@latest"}],
                "role": "KarpenterNodeRole",
                "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": "my-cluster"}}],
                "securityGroupSelectorTerms": [{"tags": {"karpenter.sh/discovery": "my-cluster"}}],
                "userData": user_data,
            },
        },
    )
    template = app.synth().get_stack_by_name("Karpenter").template
    manifests = [
        r["Properties"]["Manifest"]
        for r in template["Resources"].values()
        if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"
    ]
    (manifest,) = [json.loads(m if isinstance(m, str) else "".join(m["Fn::Join"][1])) for m in manifests]
    (node_class,) = manifest
    assert node_class["kind"] == "EC2NodeClass" and node_class["spec"]["userData"] == user_data


def test_user_data_sizes(capsys):
    sizes = {
        f: len(karpenter_user_data(f, backlog_limit=None if f != "Bottlerocket" else 8192).encode())
        for f in ("AL2023", "AL2", "Bottlerocket")
    }
    with capsys.disabled():
        print(f"\nKarpenter userData bytes: {sizes}")
    assert sizes["AL2023"] < 16384 - 2048  # leaves Karpenter's NodeConfig and the user's parts room


def test_monitor_interval_installs_the_sampler_on_an_al2023_node(tmp_path):
    """monitor_interval reaches the block through TuningOptions: the part runs from a file and installs the
    sampler's timer with that interval."""
    sandbox = fx.make_sandbox(tmp_path / "sandbox")
    root = tmp_path / "root"
    fx.build(root, "al2023-fedora-file")
    (script,) = shell_parts(karpenter_user_data("AL2023", monitor_interval=120))
    assert "CAB_MONITOR=120" in script.splitlines()
    r = fx.run_user_data(root, sandbox, script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cdk-audit-backlog: monitor: sampler every 120s installed" in r.stdout.splitlines()
    assert "OnUnitActiveSec=120" in (root / "etc/systemd/system/cdk-audit-backlog-sample.timer").read_text()
    assert "CAB_MONITOR" not in "".join(shell_parts(karpenter_user_data("AL2023")))
