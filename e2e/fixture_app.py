#!/usr/bin/env python3
"""A second small app for the e2e scenarios the example app does not exercise, built like a user would:
an Instance whose own user script runs with ``set -e`` and ends in ``exit 0``, tuned with
``kernel_cmdline=True``; and a mixed-instances group
of m5.large (8 GiB) and r5.4xlarge (128 GiB), whose types map to different limits, so its launch template's
block runs in ``auto`` (tuned by an aspect of its own, without the kernel command line), with a user script
of about 12.5 KB: the plain block would take the user data past EC2's 16,384 bytes, so the block is
compact. Synthesized by the harness exactly like ``app.py`` (``CDK_OUTDIR``), never imported.
"""

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2

from cdk_audit_backlog import AuditBacklog

app = cdk.App()
stack = cdk.Stack(app, "AuditBacklogE2e")
vpc = ec2.Vpc(
    stack,
    "Vpc",
    max_azs=1,
    nat_gateways=0,
    subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
)
user_data = ec2.UserData.for_linux()
user_data.add_commands(
    "set -e",
    "echo 'E2E-USER step=1 set -e is on'",
    "false || echo 'E2E-USER step=2 errexit still allows ||'",
    "touch /var/tmp/e2e-user-script-ran",
    "echo 'E2E-USER step=3 last line before exit 0'",
    "exit 0",
)
ec2.Instance(
    stack,
    "Strict",
    vpc=vpc,
    instance_type=ec2.InstanceType("t3.micro"),
    machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    user_data=user_data,
)
mixed_template = ec2.LaunchTemplate(
    stack,
    "MixedTemplate",
    machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    user_data=ec2.UserData.for_linux(),
)
# A long user script, as some fleets carry: each line runs (n counts them), the last one reports the count.
PADDING_LINES = 136
mixed_template.user_data.add_commands(
    "n=0",
    *[f"n=$((n+1))  # user script line {i:03d} of a long bootstrap script, padded to about sixty bytes"
      for i in range(PADDING_LINES)],
    "echo \"E2E-USER mixed group member booted after $n lines\"",
)
autoscaling.AutoScalingGroup(
    stack,
    "Mixed",
    vpc=vpc,
    mixed_instances_policy=autoscaling.MixedInstancesPolicy(
        launch_template=mixed_template,
        launch_template_overrides=[
            autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.large")),
            autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("r5.4xlarge")),
        ],
    ),
)
cdk.Aspects.of(mixed_template).add(AuditBacklog())  # nearest aspect wins: no kernel_cmdline here
AuditBacklog.apply_to(app, kernel_cmdline=True)
app.synth()
