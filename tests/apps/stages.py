"""Stages (CDK Pipelines shape): a Stage at the app, a Stage created inside a pipeline-style stack, a nested
stack."""

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from ._common import ENV, IMAGE, vpc


class Service(cdk.Stack):
    def __init__(self, scope: Construct, id: str, instance_type: str) -> None:
        super().__init__(scope, id, env=ENV)
        network = vpc(self)
        ec2.Instance(
            self, "Server", vpc=network, instance_type=ec2.InstanceType(instance_type), machine_image=IMAGE
        )
        nested = cdk.NestedStack(self, "Nested")
        ec2.LaunchTemplate(
            nested,
            "NestedLt",
            instance_type=ec2.InstanceType("m5.large"),
            machine_image=IMAGE,
            user_data=ec2.UserData.for_linux(),
        )


class ServiceStage(cdk.Stage):
    def __init__(self, scope: Construct, id: str, instance_type: str) -> None:
        super().__init__(scope, id, env=ENV)
        Service(self, "Service", instance_type)


class PipelineStack(cdk.Stack):
    """Like a CDK Pipelines stack: the deployed stages are created inside it."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id, env=ENV)
        ServiceStage(self, "Prod", "m5.xlarge")


def build(app: cdk.App) -> list:
    ServiceStage(app, "Beta", "t3.micro")
    PipelineStack(app, "Pipeline")
    return []
