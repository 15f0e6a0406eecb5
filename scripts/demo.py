#!/usr/bin/env python3
"""`make demo`: deploy the example app to a local AWS emulator and show what every launch booted with.

1. starts moto's server on ``localhost`` (not 127.0.0.1: the CDK CLI would read the bootstrap bucket's
   template URL as bucket "127") on a free port;
2. runs the real CDK CLI against it, the path a real account takes: ``cdk bootstrap``, then
   ``cdk deploy --method=direct --require-approval never`` (dummy credentials, account 123456789012,
   us-east-1);
3. reads back with boto3 every instance (the ASG's included) and launch template of the stack and prints
   resource, instance type, memory, the limit in the stored user data, and whether the block is there;
   then the SSM document and association the stack deployed for machines that already run (moto creates
   the document and skips the association: its CloudFormation does not model ``AWS::SSM::Association``);
4. runs the operator's check, ``cdk-audit-backlog verify --stack AuditBacklogExample``, against it;
5. runs ``cdk-audit-backlog impact`` on the same cloud assembly against the deployed stack: what a second
   ``cdk deploy`` would do to each launch resource and its machines (nothing: it interrupts no machine);
6. puts an hour of the sampler's metrics for every machine of the stack into moto's CloudWatch (sample
   StatsD datagrams, turned into ``PutMetricData`` as the CloudWatch agent would by ``e2e/statsd_agent.py``:
   the one simulated step) and runs ``cdk-audit-backlog health --stack AuditBacklogExample --recommend``;
7. stops the emulator.

Exit status 0 when every launch carries the block, a second deploy interrupts nothing and no machine lost
events, 1 when not, 2 when a step fails.
Against a real account the same deploy is ``npx cdk deploy`` with your credentials, and the same check is
``cdk-audit-backlog verify --stack AuditBacklogExample``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # e2e.statsd_agent
ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "AuditBacklogExample"


def log(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's server as a child process on localhost; stopped by its own pid."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://localhost:{port}"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "localhost", "-p", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto server not answering on {self.url} after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def emulator_env(endpoint: str) -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        env.pop(k, None)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        CDK_DEFAULT_ACCOUNT=ACCOUNT,
        CDK_DEFAULT_REGION=REGION,
        CDK_DISABLE_CLI_TELEMETRY="true",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        # app.py runs as `python3 app.py` (cdk.json): make that the venv's python.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def cdk(args: List[str], env: Dict[str, str], what: str) -> None:
    cmd = ["npx", "--no-install", "cdk", *args, "--no-notices"]
    log(f"{what}: {' '.join(cmd)}")
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        raise RuntimeError(f"{what} failed (exit {proc.returncode})")
    log(f"{what}: done in {time.monotonic() - t:.1f} s")


def read_back(endpoint: str) -> int:
    """Print the table; return the number of launches without the block."""
    import boto3

    from cdk_audit_backlog.cli import check_stack, format_table

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # boto3 reads it per client
    checks = check_stack(STACK, session=session, region=REGION, console=False)
    headers = ("resource", "kind", "instance_type", "memory_mib", "limit_chosen", "block_in_user_data")
    rows = [
        [
            c.resource,
            c.kind,
            c.instance_type or "-",
            "unknown" if c.memory_mib is None else str(c.memory_mib),
            c.target or "-",
            "yes" if c.block else "NO",
        ]
        for c in sorted(checks, key=lambda c: (c.kind != "launch-template", c.resource))
    ]
    print(format_table(headers, rows), end="", flush=True)
    return sum(1 for c in checks if not c.block)


def _target_value(value: object) -> str:
    if value == {"Ref": "AWS::StackName"}:
        return STACK
    return value if isinstance(value, str) else json.dumps(value)


def show_association(endpoint: str) -> bool:
    """The SSM document and association the stack deployed (``association=True``), as moto holds them.

    moto's CloudFormation creates the ``AWS::SSM::Document`` (its SSM API models documents) but warns and
    skips ``AWS::SSM::Association``: the association is in the deployed template, nothing runs it here.
    Returns whether the stack has an association.
    """
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    cfn, ssm = session.client("cloudformation"), session.client("ssm")
    template = cfn.get_template(StackName=STACK, TemplateStage="Original")["TemplateBody"]
    if isinstance(template, str):
        template = json.loads(template)
    physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    }
    found = False
    for logical_id, res in sorted(template.get("Resources", {}).items()):
        if res.get("Type") == "AWS::SSM::Document":
            name = physical.get(logical_id)
            doc = ssm.get_document(Name=name)  # moto's SSM holds it (describe_document fails on it: a 500)
            # The content as deployed (moto returns a CloudFormation-created document's content as a Python
            # repr, not JSON).
            content = res.get("Properties", {}).get("Content", {})
            steps = content.get("mainSteps", [])
            commands = "\n".join(c for s in steps for c in s.get("inputs", {}).get("runCommand", []))
            actions = ", ".join(s.get("action", "?") for s in steps)
            log(f"ssm: document {name} ({logical_id}): {doc['DocumentType']}, schema "
                f"{content.get('schemaVersion')}, {doc['Status']}, steps {actions}, "
                f"{len(commands.encode())} bytes of commands")
        elif res.get("Type") == "AWS::SSM::Association":
            found = True
            props = res.get("Properties", {})
            targets = "; ".join(
                f"{t.get('Key')}=" + ",".join(_target_value(v) for v in t.get("Values", []))
                for t in props.get("Targets", [])
            )
            log(f"ssm: association {logical_id} in the deployed template: targets {targets}, schedule "
                f"{props.get('ScheduleExpression')}; moto's CloudFormation skips AWS::SSM::Association (a "
                "warning, nothing created), so nothing runs it here; on AWS it runs when created, then on "
                "its schedule")
    return found


def run_cli(env: Dict[str, str], command: str, args: List[str], shown: str = "",
            print_stdout: bool = True) -> int:
    """``cdk-audit-backlog COMMAND ARGS`` as a user runs it: the CLI in its own process, pointed at the
    emulator. Logs the command line (``shown`` in place of ``args``, e.g. a temporary path as ``cdk.out``),
    prints its table (``print_stdout``), logs the exit status with the last line of stderr, and writes the
    rest of its output when it failed (an exit status other than 0 or 1)."""
    cmd = [sys.executable, "-m", "cdk_audit_backlog", command, *args]
    log(f"{command}: cdk-audit-backlog {command} {shown or ' '.join(args)}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if print_stdout:
        print(proc.stdout, end="", flush=True)
    summary = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    log(f"{command}: exit {proc.returncode}: {summary}")
    if proc.returncode not in (0, 1):
        sys.stderr.write(("" if print_stdout else proc.stdout) + proc.stderr)
    return proc.returncode


def run_verify(env: Dict[str, str]) -> int:
    """The operator's check, pointed at the deployed stack."""
    return run_cli(env, "verify", ["--stack", STACK, "--region", REGION], print_stdout=False)


def run_impact(env: Dict[str, str], cdk_out: Path) -> int:
    """What the next deploy of the same assembly would do to the deployed stack."""
    args = [str(cdk_out), "--stack", STACK, "--region", REGION]
    return run_cli(env, "impact", args, shown=f"cdk.out --stack {STACK} --region {REGION}")


def sample_datagrams(index: int, minute: int) -> str:
    """The datagram machine ``index`` sends at ``minute`` of the hour: a quiet backlog with a few bursts, no
    event lost, auditd owning the socket (the sampler's StatsD lines, ``monitoring_metrics``)."""
    from e2e.statsd_agent import datagram

    limit = 1024 if index == 0 else 8192
    backlog = (minute * 37 + index * 11) % 50 + (limit // 4 if minute % 20 == 7 else 0)
    return datagram(owner="auditd", AuditLostEvents=0, AuditBacklog=backlog, AuditBacklogLimit=limit,
                    AuditBacklogUsePercent=round(100 * backlog / limit, 1), AuditBacklogTarget=limit,
                    AuditBacklogDrift=0)


def publish_samples(endpoint: str) -> int:
    """An hour of samples (one a minute) for every running machine of the stack, put into moto's CloudWatch
    the way the CloudWatch agent would; returns the number of machines."""
    import datetime as dt

    import boto3

    from cdk_audit_backlog.verify import find_machines
    from e2e.statsd_agent import put_datagram

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    cfn, ec2, asg, cw = (session.client(s) for s in ("cloudformation", "ec2", "autoscaling", "cloudwatch"))
    found = find_machines(cfn, ec2, asg, STACK)
    machines = sorted(found.machines.values(), key=lambda m: (m.group is not None, m.instance_id))
    now = dt.datetime.now(dt.timezone.utc)
    for index, m in enumerate(machines):
        for minute in range(60):
            put_datagram(cw, sample_datagrams(index, minute), m.instance_id, m.group,
                         now - dt.timedelta(minutes=60 - minute))
    log(f"health: put 60 samples for each of {len(machines)} machine(s) into CloudWatch (the agent's StatsD "
        "input simulated)")
    return len(machines)


def run_health(env: Dict[str, str]) -> int:
    """``health`` on the stack, with recommendations."""
    return run_cli(env, "health", ["--stack", STACK, "--region", REGION, "--recommend"])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="cloud assembly directory (default: a temporary one)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cab-demo-"))
    out_dir = Path(args.output) if args.output else workdir / "cdk.out"
    server = MotoServer(free_port(), workdir / "moto.log")
    try:
        server.wait_ready()
        log(f"moto server on {server.url} (pid {server.proc.pid})")
        env = emulator_env(server.url)
        cdk(["bootstrap", f"aws://{ACCOUNT}/{REGION}", "-o", str(out_dir)], env, "bootstrap")
        cdk(
            ["deploy", STACK, "--method=direct", "--require-approval", "never", "-o", str(out_dir)],
            env,
            "deploy",
        )
        untuned = read_back(server.url)
        show_association(server.url)
        verify_rc = run_verify(env)
        impact_rc = run_impact(env, out_dir)
        publish_samples(server.url)
        health_rc = run_health(env)
    except RuntimeError as e:
        log(f"error: {e}")
        return 2
    finally:
        server.stop()
        log("moto server stopped")
        if not args.output:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"{'every launch carries the block' if not untuned else f'{untuned} launch(es) WITHOUT the block'}; "
        f"total {time.monotonic() - started:.1f} s")
    if 2 in (verify_rc, impact_rc, health_rc):
        return 2
    return 1 if untuned or verify_rc or impact_rc or health_rc else 0


if __name__ == "__main__":
    sys.exit(main())
