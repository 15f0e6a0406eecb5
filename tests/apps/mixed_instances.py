"""ASGs with mixed instances: explicit overrides, and attribute-based instance requirements."""

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2

from ._common import IMAGE, ENV, vpc


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Mixed", env=ENV)
    network = vpc(stack)
    ud = ec2.UserData.for_linux()
    ud.add_commands("yum install -y amazon-cloudwatch-agent", "echo done")
    lt = ec2.LaunchTemplate(stack, "Lt", machine_image=IMAGE, user_data=ud)
    autoscaling.AutoScalingGroup(
        stack, "Overrides", vpc=network,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.xlarge")),
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("t3.medium")),
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("c5.2xlarge")),
            ],
            instances_distribution=autoscaling.InstancesDistribution(on_demand_percentage_above_base_capacity=0),
        ),
    )
    lt_req = ec2.LaunchTemplate(stack, "LtReq", machine_image=IMAGE, user_data=ec2.UserData.for_linux())
    autoscaling.AutoScalingGroup(
        stack, "Requirements", vpc=network,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=lt_req,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(
                    instance_requirements=autoscaling.CfnAutoScalingGroup.InstanceRequirementsProperty(
                        v_cpu_count=autoscaling.CfnAutoScalingGroup.VCpuCountRequestProperty(min=2, max=8),
                        memory_mib=autoscaling.CfnAutoScalingGroup.MemoryMiBRequestProperty(min=4096),
                    )
                )
            ],
        ),
    )
    return [stack]


EXPECTED = {"Lt": "auto", "LtReq": "auto"}  # Lt: t3.medium 4096, m5.xlarge and c5.2xlarge 16384: per machine
