"""The operator CLI: plan, refresh-types, verify (moto in-process), report, and its parsers."""

from __future__ import annotations

import base64
import csv
import gzip
import http.server
import io
import json
import threading
import time
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import aws_cdk as cdk
import aws_cdk.aws_ec2 as ec2
import aws_cdk.aws_autoscaling as autoscaling
import boto3
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdk_audit_backlog import AuditBacklog, aws_api, cli, verify
from cdk_audit_backlog import instance_memory as im
from cdk_audit_backlog.policy import BacklogPolicy

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _dummy_aws(dummy_aws):
    """Every test here talks to moto only."""


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------- plan


def test_plan_json_gives_memory_limit_worst_case_and_share(capsys):
    rc, out, _ = run(["plan", "m5.large", "t3.micro", "x2iedn.32xlarge", "--format", "json"], capsys)
    assert rc == 0
    rows = {r["type"]: r for r in json.loads(out)}
    assert rows["m5.large"] == {
        "type": "m5.large",
        "memory_mib": 8192,
        "limit": 8192,
        "worst_case_mib": 70.1,  # 8192 x 8970 B = 70.08 MiB
        "percent_of_memory": 0.855,
    }
    assert rows["t3.micro"]["limit"] == 1024
    assert rows["x2iedn.32xlarge"]["limit"] == 262144  # 4 TiB: clamped to the maximum


def test_plan_table_and_csv(capsys):
    rc, out, _ = run(["plan", "m5.large"], capsys)
    assert rc == 0
    header, rule, row = out.splitlines()
    assert header.split() == ["type", "memory_mib", "limit", "worst_case_mib", "percent_of_memory"]
    assert row.split() == ["m5.large", "8192", "8192", "70.1", "0.85"]
    rc, out, _ = run(["plan", "m5.large", "16GiB", "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["type"] for r in rows] == ["m5.large", "16GiB"]
    assert rows[1]["memory_mib"] == "16384" and rows[1]["limit"] == "16384"


def test_plan_policy_options_pass_through(capsys):
    argv = ["plan", "m5.large", "--memory-fraction", "0.05", "--maximum", "16384", "--format", "json"]
    rc, out, _ = run(argv, capsys)
    assert rc == 0
    # 5 % of 8 GiB / 8970 B = 47,886 -> 32768, clamped to the maximum 16384.
    assert json.loads(out)[0]["limit"] == 16384


def test_plan_bad_policy_option_names_it(capsys):
    rc, _, err = run(["plan", "m5.large", "--memory-fraction", "0.5"], capsys)
    assert rc == 2 and "memory_fraction" in err
    rc, _, err = run(["plan", "m5.large", "--minimum", "4096", "--maximum", "1024"], capsys)
    assert rc == 2 and "minimum" in err


def test_plan_unknown_type_exits_1_and_says_auto(capsys):
    rc, out, err = run(["plan", "m5.large", "zz9.huge"], capsys)
    assert rc == 1
    assert "zz9.huge" in err and "MemTotal" in err
    assert out.splitlines()[-1].split()[:3] == ["zz9.huge", "unknown", "auto"]


def test_plan_all_lists_every_bundled_type(capsys):
    rc, out, _ = run(["plan", "--all", "--format", "json"], capsys)
    assert rc == 0
    rows = json.loads(out)
    assert {r["type"] for r in rows} == set(im.all_types())
    policy = BacklogPolicy()
    assert all(r["limit"] == policy.limit_for_memory(r["memory_mib"]) for r in rows)


def test_plan_needs_types_or_all(capsys):
    assert run(["plan"], capsys)[0] == 2
    assert run(["plan", "--all", "m5.large"], capsys)[0] == 2


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=4 * 1024 * 1024))
def test_plan_rows_agree_with_the_policy_and_their_own_arithmetic(mib):
    (row,) = cli.plan_rows([f"{mib}MiB"], BacklogPolicy())
    limit = BacklogPolicy().limit_for_memory(mib)
    assert row.limit == limit
    assert row.worst_case_mib == round(limit * 8970 / MiB, 1)
    assert row.percent_of_memory == round(100 * limit * 8970 / (mib * MiB), 3)


# ---------------------------------------------------------------------------------- refresh-types


def test_refresh_reports_added_removed_and_changed(tmp_path, capsys):
    out = tmp_path / "table.txt"
    old = dict(im.parse_data_file((Path(im.__file__).parent / "data" / im.DATA_FILE).read_text()).entries)
    del old["m5.large"]
    old["zz9.large"] = 4096
    old["t3.micro"] = 999
    out.write_text(im.render_data_file(old, source="old", date="2000-01-01"))
    with mock_aws():
        rc, printed, _ = run(["refresh-types", "--region", "eu-west-1", "--output", str(out)], capsys)
    assert rc == 0
    assert "added 1: m5.large" in printed
    assert "removed 1: zz9.large" in printed
    assert "changed 1: t3.micro: 999 -> 1024 MiB" in printed
    new = im.parse_data_file(out.read_text())
    assert new.entries["m5.large"] == 8192 and "zz9.large" not in new.entries
    assert "regions eu-west-1 merged" in new.header["source"]


def test_regions_that_disagree_keep_the_first_and_say_so():
    class Client:
        def __init__(self, mib):
            self.mib = mib

        def get_paginator(self, name):
            assert name == "describe_instance_types"
            mib = self.mib

            class P:
                def paginate(self, **kw):
                    assert kw["PaginationConfig"]["PageSize"] == 100
                    yield {"InstanceTypes": [{"InstanceType": "m5.large", "MemoryInfo": {"SizeInMiB": mib}}]}
                    yield {"InstanceTypes": [{"InstanceType": "t3.micro", "MemoryInfo": {"SizeInMiB": 1024}}]}

            return P()

    class Session:
        def client(self, service, region_name, config):
            return Client(8192 if region_name == "a-1" else 8000)

    entries, conflicts = cli.fetch_instance_memory(Session(), ["a-1", "b-2"])
    assert entries == {"m5.large": 8192, "t3.micro": 1024}  # both pages read
    assert conflicts == ["m5.large: 8192 MiB vs 8000 MiB in b-2"]


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    rc, _, err = run(["refresh-types", "--region", "us-east-1", "--output", str(tmp_path / "t.txt")], capsys)
    assert rc == 2
    assert "no AWS credentials" in err
    assert not (tmp_path / "t.txt").exists()


class _Throttler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):  # noqa: N802
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded."
                b"</Message></Error></Errors><RequestID>x</RequestID></Response>")
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_throttling_is_retried_with_backoff_then_reported(tmp_path, monkeypatch, capsys):
    _Throttler.hits = 0
    server = http.server.ThreadingHTTPServer(("localhost", 0), _Throttler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{server.server_address[1]}")
        monkeypatch.setattr(aws_api, "MAX_ATTEMPTS", 2)
        argv = ["refresh-types", "--region", "us-east-1", "--output", str(tmp_path / "t.txt")]
        rc, _, err = run(argv, capsys)
    finally:
        server.shutdown()
    assert rc == 2
    assert "throttling (RequestLimitExceeded)" in err
    assert _Throttler.hits == 2  # one call, one retry after a backoff (botocore standard mode)


# ----------------------------------------------------------------------------- user data decoding

BLOCK = (
    "# >>> cdk-audit-backlog >>>\n/bin/bash -s <<'CDK_AUDIT_BACKLOG' || true\nCAB_TARGET={target}\n"
    "CAB_SOURCE=m5.large/8192MiB\nCDK_AUDIT_BACKLOG\n# <<< cdk-audit-backlog <<<\n"
)


def shell(target="8192", user="echo hello\n"):
    return "#!/bin/bash\n" + BLOCK.format(target=target) + user


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decode_plain_gzip_and_mime():
    text = shell()
    assert cli.decode_stored_user_data(b64(text.encode())) == text
    assert cli.decode_stored_user_data(b64(gzip.compress(text.encode()))) == text
    mime = MIMEMultipart()
    mime.attach(MIMEText("#cloud-config\nruncmd: [ls]\n", "cloud-config"))
    mime.attach(MIMEText(text, "x-shellscript"))
    decoded = cli.decode_stored_user_data(b64(mime.as_bytes()))
    assert cli.block_target(decoded) == (True, "8192")
    assert cli.decode_stored_user_data(None) is None and cli.decode_stored_user_data("") is None


def test_block_target_needs_both_markers_in_order():
    assert cli.block_target(shell("auto")) == (True, "auto")
    assert cli.block_target("#!/bin/bash\necho CAB_TARGET=8192\n") == (False, None)
    assert cli.block_target("# <<< cdk-audit-backlog <<<\n# >>> cdk-audit-backlog >>>\n") == (False, None)
    # A CAB_TARGET after the block is the user's, not ours.
    assert cli.block_target(shell(user="CAB_TARGET=99\n").replace("CAB_TARGET=8192\n", "")) == (True, None)


# ------------------------------------------------------------------------------- console parsing

SERIAL = (
    "[  OK  ] Started cloud-final.service - Execute cloud user/final scripts.\n"
    "[   41.902113] cloud-init[1123]: cdk-audit-backlog: target 8192 (m5.large/8192MiB)\n"
    "[   42.118040] cloud-init[1123]: cdk-audit-backlog: backlog_limit 320 -> 8192 (m5.large/8192MiB; "
    "method augenrules; lost 0)\r\n"
    "ci-info: no authorized SSH keys fingerprints found for user ec2-user.\n"
)


def test_console_result_line_from_a_serial_log():
    r = cli.parse_console_result(SERIAL)
    assert (r.old, r.new) == (320, 8192)
    assert r.detail == "m5.large/8192MiB; method augenrules; lost 0"
    assert r.line.startswith("[   42.118040] cloud-init[1123]: cdk-audit-backlog: backlog_limit")


def test_console_result_from_a_real_qemu_boot():
    # Captured by the VM end-to-end run (Debian 12 cloud image, kernel and cloud-init prefixes): the image's
    # -b 8192 was larger than the t3.micro policy (1024), so the block kept it.
    log = (Path(__file__).parent / "data" / "console" / "debian12-kept-larger.serial.log").read_text()
    r = cli.parse_console_result(log)
    assert (r.old, r.new) == (8192, 8192)
    assert r.detail == "t3.micro/1024MiB; method none; lost 0"
    assert "cloud-init[358]: cdk-audit-backlog: backlog_limit" in r.line


def test_console_question_marks():
    r = cli.parse_console_result("cdk-audit-backlog: backlog_limit ? -> ? (unknown; method none; lost ?)")
    assert (r.old, r.new, r.detail) == (None, None, "unknown; method none; lost ?")


def test_console_without_result_line():
    assert cli.parse_console_result("cdk-audit-backlog: target 8192 (unknown)\n") is None
    assert cli.parse_console_result("cdk-audit-backlog: backlog_limit 320 -> soon\n") is None
    assert cli.parse_console_result(None) is None


def test_console_last_result_wins_and_unknown_old_is_none():
    log = (
        "cdk-audit-backlog: backlog_limit 64 -> 1024\nnoise\n"
        "cdk-audit-backlog: backlog_limit ? -> 2048 (x)\n"
    )
    r = cli.parse_console_result(log)
    assert (r.old, r.new, r.detail) == (None, 2048, "x")


_noise = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_noise, st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1), st.lists(_noise, max_size=5))
def test_console_parser_finds_the_line_in_any_noise(prefix, old, new, other_lines):
    lines = [line for line in other_lines if "cdk-audit-backlog: backlog_limit" not in line]
    result = f"{prefix}cdk-audit-backlog: backlog_limit {old} -> {new} (t/1MiB; lost 0)"
    log = "\n".join(lines + [result] + lines)
    r = cli.parse_console_result(log)
    assert r is not None and (r.old, r.new) == (old, new)


# ------------------------------------------------------------------------------ verify (moto, in-process)


def _deploy(instances: dict, with_asg=True) -> str:
    ec2c = boto3.client("ec2", region_name="us-east-1")
    ami = ec2c.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    subnet = ec2c.describe_subnets()["Subnets"][0]["SubnetId"]
    resources = {
        name: {
            "Type": "AWS::EC2::Instance",
            "Properties": {"ImageId": ami, "InstanceType": itype, "SubnetId": subnet,
                           "UserData": {"Fn::Base64": user_data}},
        }
        for name, (itype, user_data) in instances.items()
    }
    if with_asg:
        resources["Lt"] = {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateData": {"ImageId": ami, "InstanceType": "m5.large",
                                                  "UserData": {"Fn::Base64": shell("8192")}}},
        }
        resources["Asg"] = {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {"MinSize": "2", "MaxSize": "2", "VPCZoneIdentifier": [subnet],
                           "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Lt"},
                                              "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}},
        }
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    cfn.create_stack(StackName="Fleet", TemplateBody=json.dumps({"Resources": resources}))
    assert cfn.describe_stacks(StackName="Fleet")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    return "Fleet"


@mock_aws
def test_verify_passes_a_tuned_stack(capsys):
    stack = _deploy({"Web": ("t3.micro", shell("1024")), "Big": ("r5.8xlarge", shell("262144"))})
    rc, out, err = run(["verify", "--stack", stack, "--region", "us-east-1", "--format", "json"], capsys)
    assert rc == 0, out + err
    rows = json.loads(out)
    assert len(rows) == 5  # 2 instances, the launch template, the ASG's 2 instances
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["instance"] * 4 + ["launch-template"]
    assert all(r["status"] == "tuned" and r["block"] for r in rows)
    web = next(r for r in rows if "(Web)" in r["resource"])
    assert (web["instance_type"], web["memory_mib"], web["expected"], web["target"]) == (
        "t3.micro", 1024, 1024, "1024")
    asg_rows = [r for r in rows if r["resource"].endswith("(Asg instance)")]
    assert len(asg_rows) == 2 and all(r["instance_type"] == "m5.large" for r in asg_rows)
    assert "5 checked, 0 untuned" in err


@mock_aws
def test_verify_fails_on_untuned_and_below_policy(capsys):
    stack = _deploy(
        {"Plain": ("t3.micro", "#!/bin/bash\necho untouched\n"), "Low": ("m5.large", shell("320")),
         "Auto": ("m5.large", shell("auto"))},
        with_asg=False,
    )
    rc, out, err = run(["verify", "--stack", stack, "--region", "us-east-1"], capsys)
    assert rc == 1
    by_name = {line.split()[1]: line for line in out.splitlines()[2:]}
    assert "untuned" in by_name["(Plain)"]
    assert "below-policy (block target 320 < policy 8192 for 8192 MiB)" in by_name["(Low)"]
    assert by_name["(Auto)"].rstrip().endswith("auto")  # computed at boot: not a failure by itself
    assert "3 checked, 2 untuned or below policy" in err


@mock_aws
def test_verify_accepts_a_running_instance_whose_user_data_was_kept_but_not_a_plain_one(capsys):
    _deploy({"Old": ("t3.micro", "#!/bin/bash\necho untouched\n")}, with_asg=False)
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    template = json.loads(json.dumps(cfn.get_template(StackName="Fleet")["TemplateBody"]))
    template["Resources"]["Old"]["Metadata"] = {
        "cdk-audit-backlog": {"limit": 1024, "deployed": "user data kept; tuned by the association"}}
    template["Resources"]["New"] = json.loads(json.dumps(template["Resources"]["Old"]))
    del template["Resources"]["New"]["Metadata"]
    # The launch template a running Instance launches from (require_imdsv2): kept as well.
    template["Resources"]["OldLt"] = {
        "Type": "AWS::EC2::LaunchTemplate",
        "Metadata": {
            "cdk-audit-backlog": {
                "limit": "auto",
                "deployed": "user data kept: the running "
                "instance(s) Old launch from it; a new version would replace them",
            }
        },
        "Properties": {"LaunchTemplateData": {"MetadataOptions": {"HttpTokens": "required"}}},
    }
    cfn.create_stack(StackName="Adopted", TemplateBody=json.dumps(template))
    rc, out, err = run(["verify", "--stack", "Adopted", "--region", "us-east-1", "--format", "json"], capsys)
    assert rc == 1, out + err  # New has no block and no record: untuned
    rows = {r["resource"].split()[1]: r for r in json.loads(out)}
    assert rows["(Old)"]["status"] == "kept" and not rows["(Old)"]["failed"]
    assert "the SSM association tunes it" in rows["(Old)"]["note"]
    assert (
        rows["(OldLt)"]["status"] == "kept"
        and "a running instance launches from it" in rows["(OldLt)"]["note"]
    )
    assert rows["(New)"]["status"] == "untuned"
    assert "3 checked, 1 untuned" in err


@mock_aws
def test_verify_unknown_stack_is_a_clear_error(capsys):
    rc, _, err = run(["verify", "--stack", "NoSuchStack", "--region", "us-east-1"], capsys)
    assert rc == 2
    assert "NoSuchStack does not exist" in err


@mock_aws
def test_verify_reports_progress_up_to_the_total():
    stack = _deploy({f"I{i}": ("t3.micro", shell("1024")) for i in range(6)}, with_asg=False)
    seen = []
    checks = cli.check_stack(
        stack, region="us-east-1", max_workers=3, progress=lambda d, t: seen.append((d, t))
    )
    assert len(checks) == 6
    assert sorted(seen) == [(i, 6) for i in range(1, 7)]
    printed = io.StringIO()
    show = cli._progress_printer(printed, threshold=5)
    for d, t in sorted(seen):
        show(d, t)
    assert printed.getvalue().endswith("verify: 6/6 checked\n")


@pytest.mark.parametrize(
    "target, applied, expected, status",
    [
        ("8192", 8192, 8192, "tuned"),
        ("8192", 4096, 8192, "below-policy"),  # the console shows less than asked (e.g. a later reload)
        ("auto", None, 8192, "auto"),
        ("auto", 8192, 8192, "tuned"),
        ("auto", 320, 8192, "below-policy"),
        ("16384", None, 8192, "tuned"),  # above policy is fine (a fixed backlog_limit)
        ("1024", None, None, "tuned"),  # unknown type: nothing to compare with
    ],
)
def test_classification(target, applied, expected, status):
    c = cli.LaunchCheck("r", "instance", "m5.large", 8192, expected, True, target, applied=applied)
    verify._classify(c)
    assert c.status == status
    assert c.failed == (status == "below-policy")


# ------------------------------------------------------------------------------------------ report


def test_report_reads_metadata_and_decoded_user_data_of_a_synthesized_app(tmp_path, capsys):
    app = cdk.App(outdir=str(tmp_path / "cdk.out"))
    stack = cdk.Stack(app, "Tiny", env=cdk.Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1,
                  subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)])
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-12345678"})
    ec2.Instance(stack, "Small", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"), machine_image=image)
    ec2.LaunchTemplate(stack, "NoType", machine_image=image, user_data=ec2.UserData.for_linux())
    mixed = ec2.LaunchTemplate(stack, "Mixed", machine_image=image, user_data=ec2.UserData.for_linux())
    autoscaling.AutoScalingGroup(
        stack,
        "Group",
        vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=mixed,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                for t in ("m5.large", "r5.4xlarge")
            ],
        ),
    )
    AuditBacklog.apply_to(app)
    app.synth()
    rc, out, err = run(["report", str(tmp_path / "cdk.out"), "--format", "json", "--strict"], capsys)
    assert rc == 0, err
    rows = {r["logical_id"]: r for r in json.loads(out)}
    small = next(v for k, v in rows.items() if k.startswith("Small"))
    assert (small["limit"], small["instance_type"], small["memory_mib"], small["blocks"]) == (
        "1024", "t3.micro", 1024, 1)
    assert small["per_type"] == {}
    notype = next(v for k, v in rows.items() if k.startswith("NoType"))
    assert notype["limit"] == "auto" and notype["blocks"] == 1 and notype["per_type"] == {}
    group = next(v for k, v in rows.items() if k.startswith("Mixed"))
    assert group["limit"] == "auto" and group["per_type"] == {"m5.large": 8192, "r5.4xlarge": 131072}
    rc, out, err = run(["report", str(tmp_path / "cdk.out")], capsys)
    assert rc == 0 and "auto: m5.large=8192 r5.4xlarge=131072" in next(
        line for line in out.splitlines() if "Mixed" in line
    )


def test_report_flags_launches_without_the_block(tmp_path, capsys):
    out_dir = tmp_path / "cdk.out"
    out_dir.mkdir()
    template = {
        "Resources": {
            "Bare": {"Type": "AWS::EC2::Instance",
                     "Properties": {"UserData": {"Fn::Base64": "#!/bin/bash\necho hi\n"}}},
            "Skipped": {"Type": "AWS::EC2::LaunchTemplate",
                        "Metadata": {"cdk-audit-backlog": {"skipped": "user data is a token"}},
                        "Properties": {"LaunchTemplateData": {"UserData": {"Ref": "Param"}}}},
            "Bucket": {"Type": "AWS::S3::Bucket"},
        }
    }
    (out_dir / "S.template.json").write_text(json.dumps(template))
    rc, out, err = run(["report", str(out_dir)], capsys)
    assert rc == 0
    lines = out.splitlines()[2:]
    assert len(lines) == 2  # the bucket is not a launch
    assert "running instance(s) keep" not in err
    assert "NO" in next(line for line in lines if "Bare" in line)
    assert "skipped" in next(line for line in lines if "Skipped" in line)
    assert "without the block" in err
    assert run(["report", str(out_dir), "--strict"], capsys)[0] == 1


def test_report_does_not_count_a_running_instance_whose_user_data_was_kept(tmp_path, capsys):
    out_dir = tmp_path / "cdk.out"
    out_dir.mkdir()
    kept = {"limit": 1024, "reason": "instance type t3.micro (1024 MiB) of the resource",
            "deployed": "user data kept; tuned by the association"}
    template = {"Resources": {"Web": {"Type": "AWS::EC2::Instance", "Metadata": {"cdk-audit-backlog": kept},
                                      "Properties": {"UserData": {"Fn::Base64": "#!/bin/bash\necho hi\n"}}}}}
    (out_dir / "S.template.json").write_text(json.dumps(template))
    rc, out, err = run(["report", str(out_dir), "--strict", "--format", "json"], capsys)
    assert rc == 0, err
    (row,) = json.loads(out)
    assert row["blocks"] == 0 and row["kept"] is True
    assert row["reason"].endswith("; user data kept; tuned by the association")
    assert "1 running instance(s) keep their user data" in err and "without the block" not in err


def test_report_on_a_missing_directory(tmp_path, capsys):
    rc, _, err = run(["report", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "run cdk synth first" in err


def test_plan_and_report_start_without_the_cdk(tmp_path):
    # The operator CLI must not start jsii's Node process (about 1 s and a banner) for plan or report.
    import subprocess
    import sys

    (tmp_path / "S.template.json").write_text('{"Resources": {}}')
    code = (
        "import sys; from cdk_audit_backlog.cli import main; "
        f"main(['plan', 'm5.large']); main(['report', {str(tmp_path)!r}]); "
        "print('CDK-LOADED' if 'aws_cdk' in sys.modules or 'jsii' in sys.modules else 'CDK-NOT-LOADED')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("CDK-NOT-LOADED"), proc.stdout


@mock_aws
def test_verify_a_fleet_of_150_checks_every_instance_with_bounded_concurrency(monkeypatch):
    ec2c = boto3.client("ec2", region_name="us-east-1")
    ami = ec2c.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    subnet = ec2c.describe_subnets()["Subnets"][0]["SubnetId"]
    resources = {
        "Lt": {"Type": "AWS::EC2::LaunchTemplate",
               "Properties": {"LaunchTemplateData": {"ImageId": ami, "InstanceType": "c7g.large",
                                                     "UserData": {"Fn::Base64": shell("4096")}}}},
        "Asg": {"Type": "AWS::AutoScaling::AutoScalingGroup",
                "Properties": {"MinSize": "150", "MaxSize": "150", "VPCZoneIdentifier": [subnet],
                               "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Lt"},
                                                  "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}}},
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="Big", TemplateBody=json.dumps({"Resources": resources}))

    in_flight, peak, lock = [0], [0], threading.Lock()
    real_decode = cli.decode_stored_user_data

    def counting_decode(value):  # runs inside each worker: count how many run at once
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.01)
            return real_decode(value)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(verify, "decode_stored_user_data", counting_decode)
    progress = io.StringIO()
    checks = cli.check_stack(
        "Big", region="us-east-1", max_workers=4, progress=cli._progress_printer(progress)
    )
    assert len(checks) == 151  # 150 ASG instances + the launch template
    assert len({c.resource for c in checks}) == 151
    assert all(c.status == "tuned" and c.expected == 4096 for c in checks)
    assert 1 < peak[0] <= 4
    shown = progress.getvalue()
    assert shown.endswith("verify: 151/151 checked\n")
    assert 10 <= shown.count("\r") <= 25  # about every 5 %, not one line per instance


@mock_aws
def test_verify_skips_an_instance_terminated_meanwhile(capsys):
    stack = _deploy(
        {"Keep": ("t3.micro", shell("1024")), "Gone": ("t3.micro", shell("1024"))}, with_asg=False
    )
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    summaries = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    gone = next(r["PhysicalResourceId"] for r in summaries if r["LogicalResourceId"] == "Gone")
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[gone])
    rc, out, _ = run(["verify", "--stack", stack, "--region", "us-east-1", "--format", "json"], capsys)
    assert rc == 0
    rows = {r["resource"].split()[1]: r for r in json.loads(out)}
    assert rows["(Gone)"]["status"] == "not-running" and rows["(Gone)"]["problem"] == "terminated"
    assert rows["(Keep)"]["status"] == "tuned"


def test_refresh_with_a_corrupt_previous_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "t.txt"
    out.write_text("m5.large zero\n")
    with mock_aws():
        rc, _, err = run(["refresh-types", "--region", "us-east-1", "--output", str(out)], capsys)
    assert rc == 2 and "file left unchanged" in err
    assert out.read_text() == "m5.large zero\n"


def test_block_source():
    assert cli.block_source(shell()) == ("m5.large", 8192)
    assert cli.block_source(shell().replace("CAB_SOURCE=m5.large/8192MiB", "CAB_SOURCE=unknown")) is None
    assert cli.block_source("CAB_SOURCE=m5.large/8192MiB\n") is None  # outside a block


def test_auto_floor_allows_memtotal_below_nominal():
    # A 1 GiB t3.micro boots with MemTotal about 8 % lower; "auto" must not read as below policy for that.
    c = cli.LaunchCheck("r", "instance", "t3.micro", 1024, 1024, True, "auto", applied=512, floor=512)
    verify._classify(c)
    assert c.status == "tuned"
    c = cli.LaunchCheck("r", "instance", "t3.micro", 1024, 1024, True, "auto", applied=256, floor=512)
    verify._classify(c)
    assert c.status == "below-policy"


@mock_aws
def test_verify_holds_a_mixed_group_machine_to_its_own_type(capsys):
    # A fixed limit chosen for the group's smallest type (what the aspect wrote before per-machine sizing)
    # leaves a larger machine below the policy for its own memory: reported, with the reason and the fix.
    small_block = shell("8192")  # CAB_SOURCE=m5.large/8192MiB
    mixed_auto = shell("auto").replace("CAB_SOURCE=m5.large/8192MiB", "CAB_SOURCE=mixed")
    stack = _deploy(
        {
            "Big": ("m5.2xlarge", small_block),
            "Wrong": (
                "m5.2xlarge",
                shell("8192").replace("CAB_SOURCE=m5.large/8192MiB", "CAB_SOURCE=m5.2xlarge/32768MiB"),
            ),
            "Auto": ("m5.2xlarge", mixed_auto),
        },
        with_asg=False,
    )
    rc, out, _ = run(["verify", "--stack", stack, "--region", "us-east-1", "--format", "json"], capsys)
    rows = {r["resource"].split()[1]: r for r in json.loads(out)}
    assert rows["(Big)"]["status"] == "below-policy"
    assert "chosen for m5.large (8192 MiB), a smaller type of its group" in rows["(Big)"]["problem"]
    assert "auto" in rows["(Big)"]["problem"]
    assert rows["(Wrong)"]["status"] == "below-policy"  # chosen for its own type, yet below that policy
    assert (
        rows["(Auto)"]["status"] == "auto"
        and rows["(Auto)"]["note"] == "a mixed group: sized at boot from MemTotal"
    )
    assert rc == 1


def test_no_limit_applied_is_never_below_policy():
    # The console shows 0: an image's -b 0 (no limit at all) kept by the block.
    c = cli.LaunchCheck("r", "instance", "r5.4xlarge", 131072, 131072, True, "131072", applied=0)
    verify._classify(c)
    assert c.status == "tuned" and not c.failed and "no limit" in c.note
    c = cli.LaunchCheck("r", "instance", "t3.micro", 1024, 1024, True, "auto", applied=0, floor=512)
    verify._classify(c)
    assert c.status == "tuned" and not c.failed


@mock_aws
def test_enabled_regions_for_all_regions():
    regions = cli.enabled_regions(boto3.session.Session())
    assert {"us-east-1", "eu-west-1", "ap-southeast-2"} <= set(regions)
    assert regions == sorted(regions)


def test_region_and_all_regions_exclude_each_other(capsys):
    rc, _, err = run(["refresh-types", "--region", "us-east-1", "--all-regions"], capsys)
    assert rc == 2 and "not both" in err


def test_verify_without_credentials_or_region_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    rc, _, err = run(["verify", "--stack", "Any", "--region", "us-east-1"], capsys)
    assert rc == 2 and "stack Any: no AWS credentials found" in err
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    rc, _, err = run(["verify", "--stack", "Any"], capsys)
    assert rc == 2 and "no region" in err


_script_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)


@settings(max_examples=150, deadline=None)
@given(_script_text, st.booleans())
def test_decode_stored_user_data_round_trips(text, gzipped):
    assume(text)  # empty user data reads as None (see test_decode_plain_gzip_and_mime)
    raw = text.encode()
    value = b64(gzip.compress(raw) if gzipped else raw)
    decoded = cli.decode_stored_user_data(value)
    if text.lstrip().lower().startswith(("content-type: multipart", "mime-version:")):
        return  # parsed as MIME: covered by test_decode_plain_gzip_and_mime
    assert decoded == text


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.just("auto"), st.integers(1, 2**31 - 1).map(str)), _script_text, st.booleans())
def test_block_target_is_found_whatever_the_user_lines(target, user, in_mime):
    user = user.replace("# >>> cdk-audit-backlog >>>", "").replace("# <<< cdk-audit-backlog <<<", "")
    text = shell(target, user + "\n")
    if in_mime:
        mime = MIMEMultipart()
        mime.attach(MIMEText("#cloud-config\n", "cloud-config"))
        mime.attach(MIMEText(text, "x-shellscript", "utf-8"))
        text = cli.decode_stored_user_data(b64(mime.as_bytes()))
    assert cli.block_target(text) == (True, target)
