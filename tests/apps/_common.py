import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

ENV = cdk.Environment(account="123456789012", region="us-east-1")
IMAGE = ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"})


def vpc(stack):
    return ec2.Vpc(
        stack,
        "Vpc",
        max_azs=2,
        nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
    )
