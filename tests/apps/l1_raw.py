"""Raw L1 resources: literal Base64, Fn::Join with Ref, Fn::Sub, a parameter, an imported launch template."""

import base64

import aws_cdk as cdk
from aws_cdk import Fn
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2

from ._common import ENV, vpc


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Raw", env=ENV)
    network = vpc(stack)
    subnet = network.public_subnets[0].subnet_id
    ec2.CfnInstance(
        stack,
        "Literal",
        image_id="ami-0123456789abcdef0",
        instance_type="t3.large",
        subnet_id=subnet,
        user_data=base64.b64encode(b"#!/bin/sh\necho literal\n").decode(),
    )
    bucket = cdk.CfnParameter(stack, "Bucket", default="my-bucket")
    ec2.CfnLaunchTemplate(
        stack,
        "Joined",
        launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
            instance_type="c5.large",
            user_data=Fn.base64(
                Fn.join("", ["#!/bin/bash\naws s3 cp s3://", bucket.value_as_string, "/app.tgz /opt\n"])
            ),
        ),
    )
    ec2.CfnInstance(
        stack,
        "Sub",
        image_id="ami-0123456789abcdef0",
        instance_type="m5.large",
        subnet_id=subnet,
        user_data=Fn.base64(Fn.sub("#!/bin/bash\necho ${AWS::Region} ${Bucket} > /etc/where\n")),
    )
    ud_param = cdk.CfnParameter(stack, "UserDataParam", default="IyEvYmluL2Jhc2gK")
    ec2.CfnInstance(stack, "FromParameter", image_id="ami-0123456789abcdef0", instance_type="m5.large",
                    subnet_id=subnet, user_data=ud_param.value_as_string)
    imported = ec2.LaunchTemplate.from_launch_template_attributes(
        stack, "Imported", launch_template_id="lt-0abc1234def567890"
    )
    autoscaling.AutoScalingGroup(stack, "ImportedGroup", vpc=network, launch_template=imported)
    return [stack]


EXPECTED = {"Literal": 8192, "Joined": 4096, "Sub": 8192, "FromParameter": "skipped"}
