"""A synthetic app with many EC2 launches, for benchmarks/synth_overhead.py.

Usage: python bench_app.py KIND COUNT MODE OUTDIR
KIND "simple": Instances, LaunchTemplates and ASGs. KIND "mixed": also mixed-instance ASGs, ECS capacity,
MIME and raw L1 launches. Launches are spread over stacks of at most 40 (CloudFormation's 500 resources).
MODE: plain (no library), tuned (``AuditBacklog.apply_to(app)``), aspect
(``Aspects.of(app).add(AuditBacklog())``), noop (a Python aspect that does nothing), nag (cdk-nag 3.x
``AwsSolutionsChecks`` as a validation plugin; its findings fail synth, which is caught: the time is that of
the whole check).
"""

import os
import sys

import aws_cdk as cdk
import jsii
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs

from cdk_audit_backlog import AuditBacklog

TYPES = [
    "t3.micro",
    "t3.large",
    "m5.large",
    "c5.xlarge",
    "r5.2xlarge",
    "m6g.medium",
    "c7g.large",
    "x2iedn.xlarge",
]
PER_STACK = 40
IMAGE = ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"})


def add_launch(stack, vpc, i, kind, cluster):
    t = ec2.InstanceType(TYPES[i % len(TYPES)])
    shape = i % (3 if kind == "simple" else 6)
    if shape == 0:
        inst = ec2.Instance(stack, f"I{i}", vpc=vpc, instance_type=t, machine_image=IMAGE)
        inst.user_data.add_commands(f"echo instance {i}")
    elif shape == 1:
        ud = ec2.UserData.for_linux()
        ud.add_commands(f"echo template {i}")
        ec2.LaunchTemplate(stack, f"T{i}", instance_type=t, machine_image=IMAGE, user_data=ud)
    elif shape == 2:
        autoscaling.AutoScalingGroup(stack, f"G{i}", vpc=vpc, instance_type=t, machine_image=IMAGE)
    elif shape == 3:
        lt = ec2.LaunchTemplate(stack, f"M{i}", machine_image=IMAGE, user_data=ec2.UserData.for_linux())
        autoscaling.AutoScalingGroup(
            stack,
            f"MG{i}",
            vpc=vpc,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=lt,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(x))
                    for x in ("m5.large", "c5.large")
                ],
            ),
        )
    elif shape == 4:
        cluster.add_capacity(f"C{i}", instance_type=t, machine_image=ecs.EcsOptimizedImage.amazon_linux2())
    else:
        mime = ec2.MultipartUserData()
        part = ec2.UserData.for_linux()
        part.add_commands(f"echo part {i}")
        mime.add_user_data_part(part, ec2.MultipartBody.SHELL_SCRIPT, True)
        ec2.CfnLaunchTemplate(
            stack,
            f"R{i}",
            launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
                instance_type=t.to_string(), user_data=cdk.Fn.base64(mime.render())
            ),
        )


def count_bridge_messages(path):
    """Counts the requests this process sends to the jsii kernel (each one a round trip to Node) and writes
    the count to ``path`` at exit: a figure of the work that machine load does not blur, unlike wall time."""
    import atexit

    from jsii._kernel.providers import process

    sent = [0]
    send = process._NodeProcess.send

    def counting_send(self, *args, **kwargs):
        sent[0] += 1
        return send(self, *args, **kwargs)

    process._NodeProcess.send = counting_send

    def write():
        with open(path, "w") as f:
            f.write(str(sent[0]))

    atexit.register(write)


def main(kind, count, mode, outdir):
    app = cdk.App(
        outdir=outdir, context={"@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": True}
    )
    env = cdk.Environment(account="123456789012", region="us-east-1")
    for s in range(0, count, PER_STACK):
        stack = cdk.Stack(app, f"Bench{s // PER_STACK}", env=env)
        vpc = ec2.Vpc(
            stack,
            "Vpc",
            max_azs=1,
            nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="p", subnet_type=ec2.SubnetType.PUBLIC)],
        )
        cluster = ecs.Cluster(stack, "Cluster", vpc=vpc) if kind == "mixed" else None
        for i in range(s, min(count, s + PER_STACK)):
            add_launch(stack, vpc, i, kind, cluster)
    if mode == "tuned":
        AuditBacklog.apply_to(app)
    elif mode == "aspect":
        cdk.Aspects.of(app).add(AuditBacklog())
    elif mode == "noop":
        cdk.Aspects.of(app).add(_Noop())
    elif mode == "nag":
        from cdk_nag import AwsSolutionsChecks

        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    elif mode != "plain":
        raise SystemExit(f"unknown mode {mode!r}")
    try:
        app.synth()
    except Exception as e:  # noqa: BLE001 - only nag's findings may fail synth here
        if mode != "nag":
            raise
        print(f"cdk-nag findings failed synth, as expected: {str(e).splitlines()[0][:120]}", file=sys.stderr)


@jsii.implements(cdk.IAspect)
class _Noop:
    """An aspect that does nothing: the floor any Python aspect pays (one jsii callback per construct)."""

    def visit(self, node) -> None:
        return None


if __name__ == "__main__":
    if os.environ.get("BENCH_MESSAGES_FILE"):
        count_bridge_messages(os.environ["BENCH_MESSAGES_FILE"])
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
