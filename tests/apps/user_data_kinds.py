"""MultipartUserData, UserData.custom('#cloud-config'), CloudFormationInit, Windows."""

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from ._common import ENV, IMAGE, vpc


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Kinds", env=ENV)
    network = vpc(stack)
    mime = ec2.MultipartUserData()
    part = ec2.UserData.for_linux()
    part.add_commands("echo part-one")
    mime.add_user_data_part(part, ec2.MultipartBody.SHELL_SCRIPT, True)
    mime.add_part(ec2.MultipartBody.from_raw_body(content_type="text/cloud-config; charset=\"utf8\"",
                                                  body="#cloud-config\npackages: [jq]\n"))
    ec2.Instance(stack, "Multipart", vpc=network, instance_type=ec2.InstanceType("t3.small"),
                 machine_image=IMAGE, user_data=mime)
    ec2.Instance(
        stack,
        "CloudConfig",
        vpc=network,
        instance_type=ec2.InstanceType("t3.small"),
        machine_image=IMAGE,
        user_data=ec2.UserData.custom(
            "#cloud-config\nruncmd:\n  - [sh, -c, 'echo ${HOME} > /tmp/h']\n"
            "write_files:\n  - path: /etc/app.conf\n    content: |\n      a=1\n"
        ),
    )
    ec2.Instance(
        stack, "WithInit", vpc=network, instance_type=ec2.InstanceType("m5.large"), machine_image=IMAGE,
        init=ec2.CloudFormationInit.from_elements(ec2.InitFile.from_string("/etc/motd", "hello\n")),
        user_data_causes_replacement=True,
    )
    ec2.Instance(stack, "Windows", vpc=network, instance_type=ec2.InstanceType("m5.large"),
                 machine_image=ec2.MachineImage.generic_windows({"us-east-1": "ami-0fedcba9876543210"}))
    return [stack]


EXPECTED = {"Multipart": 2048, "CloudConfig": 2048, "WithInit": 8192, "Windows": "skipped"}
