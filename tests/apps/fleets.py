"""EC2 Fleet and Spot Fleet: launch template configs with instance type overrides, one without overrides,
and a Spot Fleet whose inline launch specification is left alone with a warning."""

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from ._common import IMAGE, ENV

FLEET_ROLE = "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role"


def build(app: cdk.App) -> list:
    stack = cdk.Stack(app, "Fleets", env=ENV)
    ud = ec2.UserData.for_linux()
    ud.add_commands("echo fleet worker")
    # Overridden by the EC2 Fleet with two types of different limits: auto, each machine sizes itself.
    mixed = ec2.LaunchTemplate(stack, "FleetLt", machine_image=IMAGE, user_data=ud)
    # Its own type, launched by a Spot Fleet config without overrides and by one that overrides it.
    spot = ec2.LaunchTemplate(
        stack, "SpotLt", machine_image=IMAGE, instance_type=ec2.InstanceType("t3.micro"),
        user_data=ec2.UserData.for_linux(),
    )
    ec2.CfnEC2Fleet(
        stack, "Fleet",
        target_capacity_specification=ec2.CfnEC2Fleet.TargetCapacitySpecificationRequestProperty(
            total_target_capacity=2, default_target_capacity_type="spot"
        ),
        type="maintain",
        launch_template_configs=[
            ec2.CfnEC2Fleet.FleetLaunchTemplateConfigRequestProperty(
                launch_template_specification=ec2.CfnEC2Fleet.FleetLaunchTemplateSpecificationRequestProperty(
                    launch_template_id=mixed.launch_template_id, version=mixed.latest_version_number
                ),
                overrides=[
                    ec2.CfnEC2Fleet.FleetLaunchTemplateOverridesRequestProperty(instance_type="m5.large"),
                    ec2.CfnEC2Fleet.FleetLaunchTemplateOverridesRequestProperty(instance_type="r5.4xlarge"),
                ],
            )
        ],
    )
    spot_spec = ec2.CfnSpotFleet.FleetLaunchTemplateSpecificationProperty(
        launch_template_id=spot.launch_template_id, version="$Latest"
    )
    ec2.CfnSpotFleet(
        stack, "Spot",
        spot_fleet_request_config_data=ec2.CfnSpotFleet.SpotFleetRequestConfigDataProperty(
            iam_fleet_role=FLEET_ROLE, target_capacity=2,
            launch_template_configs=[
                ec2.CfnSpotFleet.LaunchTemplateConfigProperty(launch_template_specification=spot_spec),
                ec2.CfnSpotFleet.LaunchTemplateConfigProperty(
                    launch_template_specification=spot_spec,
                    overrides=[ec2.CfnSpotFleet.LaunchTemplateOverridesProperty(instance_type="t3.small")],
                ),
            ],
        ),
    )
    ec2.CfnSpotFleet(
        stack, "Inline",
        spot_fleet_request_config_data=ec2.CfnSpotFleet.SpotFleetRequestConfigDataProperty(
            iam_fleet_role=FLEET_ROLE, target_capacity=1,
            launch_specifications=[
                ec2.CfnSpotFleet.SpotFleetLaunchSpecificationProperty(
                    image_id="ami-0123456789abcdef0", instance_type="m5.large",
                    user_data=cdk.Fn.base64("#!/bin/bash\necho inline\n"),
                )
            ],
        ),
    )
    return [stack]


# FleetLt: m5.large 8192 and r5.4xlarge 131072 (the fleet's overrides): per machine. SpotLt: t3.micro (1024,
# its own type, for the config without overrides) and t3.small (2048): per machine.
EXPECTED = {"FleetLt": "auto", "SpotLt": "auto"}
