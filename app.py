#!/usr/bin/env python3
"""Example app: the stack a user copies. One line (`AuditBacklog.apply_to(app)`) tunes every EC2 launch.

Synthesizes with no AWS credentials and no lookups: `make synth` (or `npx cdk synth`).
"""

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_audit_backlog import AuditBacklog


class ExampleStack(cdk.Stack):
    """A VPC with public subnets only (no NAT), one Instance and one Auto Scaling group."""

    def __init__(self, scope: Construct, construct_id: str, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
        )
        image = ec2.MachineImage.latest_amazon_linux2023()

        # A t3.micro (1 GiB): the policy picks 1024.
        web = ec2.Instance(
            self,
            "Web",
            vpc=vpc,
            instance_type=ec2.InstanceType("t3.micro"),
            machine_image=image,
        )
        web.user_data.add_commands("dnf install -y nginx", "systemctl enable --now nginx")

        # An Auto Scaling group of m5.large (8 GiB) from a launch template: the policy picks 8192.
        worker_user_data = ec2.UserData.for_linux()
        worker_user_data.add_commands("echo 'worker ready' > /etc/motd")
        template = ec2.LaunchTemplate(
            self,
            "WorkerTemplate",
            instance_type=ec2.InstanceType("m5.large"),
            machine_image=image,
            user_data=worker_user_data,
            security_group=ec2.SecurityGroup(self, "WorkerSg", vpc=vpc),
        )
        autoscaling.AutoScalingGroup(
            self,
            "Workers",
            vpc=vpc,
            launch_template=template,
            min_capacity=1,
            max_capacity=2,
        )


app = cdk.App()
ExampleStack(app, "AuditBacklogExample")
# The one line: every EC2 launch in the app (and in any Stage) boots with a tuned audit backlog,
# association=True tunes the machines that already run too (SSM State Manager, no restart), and
# monitoring=True publishes each machine's audit status to CloudWatch (through the CloudWatch agent) with
# alarms on lost events and backlog use, and a dashboard (docs/monitoring.md).
AuditBacklog.apply_to(app, association=True, monitoring=True)
app.synth()
