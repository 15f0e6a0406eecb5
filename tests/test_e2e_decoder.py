"""The e2e harness's own user data decoder (e2e/userdata.py) and serial parser (e2e/vm.py): no VM needed."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2e import userdata, vm
from e2e.scenarios import RESULT_LINE, grub_args, merged_b, rules_d_b, without_initramfs

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


def _split(s: str, cuts: list) -> list:
    points = sorted({c % (len(s) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(s[last:p])
        last = p
    parts.append(s[last:])
    return parts


@given(text, st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.sampled_from(["", "\n", ","]))
def test_join_of_any_split_resolves_to_the_original(s, cuts, sep):
    parts = _split(s, cuts)
    joined = sep.join(parts)
    assert userdata.resolve({"Fn::Join": [sep, parts]}) == joined


@given(st.lists(st.one_of(text, st.sampled_from(sorted(userdata.PSEUDO))), max_size=10))
def test_pseudo_parameters_are_substituted_in_order(items):
    parts = [{"Ref": i} if i in userdata.PSEUDO else i for i in items]
    expected = "".join(userdata.PSEUDO[i] if i in userdata.PSEUDO else i for i in items)
    assert userdata.resolve({"Fn::Join": ["", parts]}) == expected


def test_instance_and_launch_template_user_data_are_found():
    script = "#!/bin/bash\necho hi\n"
    template = {
        "Resources": {
            "I": {"Type": "AWS::EC2::Instance", "Properties": {"UserData": {"Fn::Base64": script}}},
            "L": {"Type": "AWS::EC2::LaunchTemplate",
                  "Properties": {"LaunchTemplateData": {"UserData": {"Fn::Base64": {
                      "Fn::Join": ["", ["#!/bin/bash\nregion=", {"Ref": "AWS::Region"}, "\n"]]}}}}},
            "N": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {}}},
            "B": {"Type": "AWS::S3::Bucket"},
        }
    }
    assert userdata.user_data_by_resource(template) == {
        "I": script.encode(), "L": b"#!/bin/bash\nregion=us-east-1\n"}


def test_refs_to_resources_and_unknown_intrinsics_fail_loudly():
    with pytest.raises(userdata.DecodeError, match="Ref 'MyBucket'"):
        userdata.resolve({"Fn::Join": ["", ["x", {"Ref": "MyBucket"}]]})
    with pytest.raises(userdata.DecodeError):
        userdata.resolve({"Fn::GetAtt": ["A", "B"]})
    assert userdata.resolve({"Ref": "MyBucket"}, refs={"MyBucket": "b"}) == "b"


def test_sub_substitutes_and_keeps_escapes():
    assert userdata.resolve({"Fn::Sub": ["r=${AWS::Region} x=${X} lit=${!Y}", {"X": "1"}]}) == \
        "r=us-east-1 x=1 lit=${Y}"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 =:/.-_", max_size=80), st.integers(1, 50))
def test_result_lines_survive_kernel_noise_in_front(value, boot):
    lines = [(0.0, f"[   12.3] audit: noise E2E-RESULT boot={boot} key.x={value}\r")]
    run = vm.Run(name="t", log=None, elapsed_s=0, accel="tcg", append="", lines=lines)  # type: ignore[arg-type]
    vm._parse(run)
    assert run.boots == {boot: {"key.x": value}}


def test_files_and_outputs_are_decoded():
    content = "-b 320\n-f 1\n"
    report = {
        "file:/etc/audit/audit.rules": "ab" * 32 + " 640 root:root 13 1700000000",
        "b64:/etc/audit/audit.rules": base64.b64encode(content.encode()).decode(),
        "output_lines": "2",
        "output.1": (
            "cdk-audit-backlog: backlog_limit 320 -> 8192 (m5.large/8192MiB; method auditctl; lost 0)"
        ),
        "output.2": "E2E-USER step=1",
    }
    f = vm.files(report)["/etc/audit/audit.rules"]
    assert (f["mode"], f["owner"], f["content"]) == (0o640, "root:root", content)
    out = vm.outputs(report)
    assert RESULT_LINE.match(out[0]).groups()[:2] == ("320", "8192")
    assert merged_b(content) == 320 and merged_b("-D\n") is None


def test_grub_args_are_what_grub_passes():
    line = (
        "linux\t/boot/vmlinuz-6.1.0-56-cloud-amd64 root=UUID=ab-cd ro console=ttyS0 "
        "audit_backlog_limit=1024 quiet"
    )
    assert grub_args(line) == "root=UUID=ab-cd ro console=ttyS0 audit_backlog_limit=1024 quiet"
    with pytest.raises(ValueError):
        grub_args("initrd /boot/initrd.img")


def test_the_rerun_boots_grubs_arguments_with_the_root_named_by_device():
    args = "root=UUID=ab-cd ro console=ttyS0 audit_backlog_limit=1024 quiet"
    assert without_initramfs(args) == "root=/dev/nvme0n1 ro console=ttyS0 audit_backlog_limit=1024 quiet"


def test_rules_d_merge_follows_ls_v_order_and_last_b_wins():
    files = {
        "/etc/audit/rules.d/audit.rules": {"content": "-D\n-b 320\n-f 1"},
        "/etc/audit/rules.d/99-x.rules": {"content": "-b 9999\n"},
        "/etc/audit/rules.d/10-a.rules": {"content": "-b 1\n"},
        "/etc/audit/rules.d/9-a.rules": {"content": "-b 2\n"},
        "/etc/audit/audit.rules": {"content": "-b 5\n"},
    }
    assert rules_d_b(files) == 320  # audit.rules sorts after 99-x.rules
    files["/etc/audit/rules.d/zz-cdk-audit-backlog.rules"] = {"content": "-b 8192\n"}
    assert rules_d_b(files) == 8192


def test_guest_scripts_are_shellcheck_clean():
    import subprocess
    import sys
    from pathlib import Path

    guest = Path(__file__).resolve().parent.parent / "e2e" / "guest"
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = sorted(str(p) for p in guest.glob("*.sh"))
    assert len(scripts) == 3
    proc = subprocess.run([str(shellcheck), "-s", "bash", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_example_app_user_data_decodes_to_what_cloud_init_gets():
    from pathlib import Path

    data = userdata.synthesized_user_data(Path(__file__).resolve().parent.parent / "app.py")
    web, worker = userdata.find(data, "Web"), userdata.find(data, "WorkerTemplate")
    for script in (web, worker):
        assert script.startswith(b"#!/bin/bash\n# >>> cdk-audit-backlog >>>\n")
        assert b"\n# <<< cdk-audit-backlog <<<\n" in script
        assert b"Fn::" not in script and b"${Token[" not in script
    # t3.micro, m5.large
    assert (userdata.block_target(web), userdata.block_target(worker)) == ("1024", "8192")
    assert web.endswith(b"dnf install -y nginx\nsystemctl enable --now nginx")
    assert worker.endswith(b"echo 'worker ready' > /etc/motd")
