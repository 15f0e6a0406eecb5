"""An app that runs cdk-nag's AwsSolutionsChecks and cdk-audit-backlog's AuditBacklogCheck side by side.

Both are CDK policy-validation plugins registered with ``Validations.of(app).add_plugins(...)``; their
findings appear in one validation report and both are acknowledged the same way, with
``Validations.of(scope).acknowledge(Acknowledgment(id="<Plugin>::<Rule>", reason=...))``.

The AwsSolutions findings this small demo stack raises are acknowledged on the stack (with reasons); the
audit backlog is not acknowledged but tuned, so ``cdk synth`` passes only when ``AuditBacklog`` runs:

    NAG_APP_TUNE=0 python3 tests/apps/nag_app.py   # fails: CdkAuditBacklog::Untuned for each launch
    python3 tests/apps/nag_app.py                  # passes
"""

from __future__ import annotations

import os
from typing import Optional

from aws_cdk import Acknowledgment, App, Stack, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from cdk_nag import AwsSolutionsChecks

from cdk_audit_backlog import AuditBacklog
from cdk_audit_backlog.check import AuditBacklogCheck

#: AwsSolutions rules this demo stack trips, with the reason each is accepted here.
NAG_ACKNOWLEDGED = {
    "AwsSolutions::AwsSolutions-VPC7": "demo VPC without traffic worth logging",
    "AwsSolutions::AwsSolutions-EC26": "demo instances keep no data on their volumes",
    "AwsSolutions::AwsSolutions-EC28": "detailed monitoring is not needed for the demo",
    "AwsSolutions::AwsSolutions-EC29": "demo instance may be terminated at any time",
    "AwsSolutions::AwsSolutions-AS3": "no scaling notifications in the demo",
}


def build(*, tune: bool = True, outdir: Optional[str] = None) -> App:
    """The app; with ``tune`` the launches get the audit backlog block from ``AuditBacklog``."""
    app = App(builtin_cloud_formation_validation=False, outdir=outdir)
    stack = Stack(app, "NagDemo")
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        nat_gateways=0,
        max_azs=2,
        subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
    )
    image = ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"})
    user_data = ec2.UserData.for_linux()
    user_data.add_commands("echo 'web server starting'")
    ec2.Instance(
        stack,
        "Web",
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
        machine_image=image,
        user_data=user_data,
    )
    template = ec2.LaunchTemplate(stack, "WorkerTemplate", machine_image=image)
    autoscaling.AutoScalingGroup(
        stack,
        "Workers",
        vpc=vpc,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=template,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.large")),
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType("m5.xlarge")),
            ],
        ),
    )

    Validations.of(app).add_plugins(AwsSolutionsChecks(app), AuditBacklogCheck())
    Validations.of(stack).acknowledge(
        *[Acknowledgment(id=rule, reason=reason) for rule, reason in NAG_ACKNOWLEDGED.items()]
    )
    if tune:
        AuditBacklog.apply_to(app)
    return app


if __name__ == "__main__":
    build(tune=os.environ.get("NAG_APP_TUNE", "1") != "0").synth()
