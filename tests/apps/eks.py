"""EKS: a managed node group with a MIME launch template, one with a template without user data,
and self-managed ASG capacity."""

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks

from ._common import ENV, vpc


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Eks", env=ENV)
    network = vpc(stack)
    cluster = eks.Cluster(stack, "Cluster", vpc=network, version=eks.KubernetesVersion.V1_31,
                          default_capacity_type=eks.DefaultCapacityType.NODEGROUP, default_capacity=0,
                          vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)])
    mime = ec2.MultipartUserData()
    extra = ec2.UserData.for_linux()
    extra.add_commands("echo 'net.core.somaxconn=4096' > /etc/sysctl.d/90-app.conf")
    mime.add_user_data_part(extra, ec2.MultipartBody.SHELL_SCRIPT, True)
    lt = ec2.LaunchTemplate(stack, "NodeLt", user_data=mime)
    cluster.add_nodegroup_capacity(
        "Managed",
        instance_types=[ec2.InstanceType("m6i.large"), ec2.InstanceType("m6a.large")],
        launch_template_spec=eks.LaunchTemplateSpec(
            id=lt.launch_template_id, version=lt.latest_version_number
        ),
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
    )
    bare = ec2.CfnLaunchTemplate(
        stack,
        "BareLt",
        launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
            metadata_options=ec2.CfnLaunchTemplate.MetadataOptionsProperty(http_tokens="required")
        ),
    )
    cluster.add_nodegroup_capacity(
        "ManagedBare", instance_types=[ec2.InstanceType("c6i.xlarge")],
        launch_template_spec=eks.LaunchTemplateSpec(id=bare.ref, version=bare.attr_latest_version_number),
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
    )
    cluster.add_auto_scaling_group_capacity(
        "SelfManaged", instance_type=ec2.InstanceType("m5.2xlarge"),
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
    )
    return [stack]


EXPECTED = {"NodeLt": 8192, "BareLt": 8192, "ClusterSelfManaged": 32768}
