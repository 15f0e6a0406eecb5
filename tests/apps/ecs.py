"""ECS: Cluster.add_capacity (AL2 ECS-optimized), AsgCapacityProvider (AL2023), and Bottlerocket capacity."""

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs

from ._common import ENV, vpc


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Ecs", env=ENV)
    network = vpc(stack)
    cluster = ecs.Cluster(stack, "Cluster", vpc=network)
    cluster.add_capacity(
        "Al2", instance_type=ec2.InstanceType("c5.large"),
        machine_image=ecs.EcsOptimizedImage.amazon_linux2(), min_capacity=1,
    )
    asg = autoscaling.AutoScalingGroup(
        stack, "Al2023Asg", vpc=network, instance_type=ec2.InstanceType("r6i.large"),
        machine_image=ecs.EcsOptimizedImage.amazon_linux2023(),
    )
    cluster.add_asg_capacity_provider(ecs.AsgCapacityProvider(stack, "Provider", auto_scaling_group=asg))
    cluster.add_capacity(
        "Bottlerocket", instance_type=ec2.InstanceType("m5.large"),
        machine_image=ecs.BottleRocketImage(),
    )
    return [stack]


EXPECTED = {"ClusterAl2": 4096, "Al2023Asg": 16384, "ClusterBottlerocket": "skipped"}
