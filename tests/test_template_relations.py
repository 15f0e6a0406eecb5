"""The reader's one parser of "which resource launches from which launch template", on hand-written templates
spelled as CDK synthesizes them."""

from __future__ import annotations

from cdk_audit_backlog.template_relations import (
    LaunchTemplateUse,
    launch_template_of,
    launch_template_users,
    references,
    spec_refers_to,
)

BY_ID = {"LaunchTemplateId": {"Ref": "Lt"}, "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]}}


def lt(name=None):
    props = {"LaunchTemplateData": {"InstanceType": "m5.large"}}
    if name is not None:
        props["LaunchTemplateName"] = name
    return {"Type": "AWS::EC2::LaunchTemplate", "Properties": props}


def test_references_reads_ref_and_both_getatt_forms():
    value = {"Fn::Join": ["", [{"Ref": "A"}, {"Fn::GetAtt": ["B", "Arn"]}, {"Fn::GetAtt": "C.Arn"}]]}
    assert references(value) == {"A", "B", "C"}
    assert references(["x", {"Ref": 3}]) == set()


def test_a_specification_names_a_template_by_reference_or_by_its_literal_name():
    assert spec_refers_to(BY_ID, "Lt", None)
    assert not spec_refers_to(BY_ID, "Other", None)
    assert spec_refers_to({"LaunchTemplateId": {"Fn::GetAtt": ["Lt", "LaunchTemplateId"]}}, "Lt", None)
    by_name = {"LaunchTemplateName": "web", "Version": "1"}
    assert spec_refers_to(by_name, "Lt", "web") and not spec_refers_to(by_name, "Lt", "api")
    assert not spec_refers_to(by_name, "Lt", None)  # a template without a literal name is never named
    assert spec_refers_to({"Name": "web"}, "Lt", "web", name_key="Name")  # EKS's spelling
    assert not spec_refers_to("Lt", "Lt", None)


def test_every_kind_of_user_in_template_order_with_the_types_it_launches_instead():
    resources = {
        "Lt": lt(),
        "Plain": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {"LaunchTemplate": BY_ID}},
        "Mixed": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {"MixedInstancesPolicy": {"LaunchTemplate": {
                "LaunchTemplateSpecification": BY_ID,
                "Overrides": [
                    {"InstanceType": "m5.xlarge"},
                    {"InstanceRequirements": {"VCpuCount": {"Min": 2}}},
                    {"InstanceType": "c7g.large",
                     "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "Arm"}}},
                ],
            }}},
        },
        "Nodes": {"Type": "AWS::EKS::Nodegroup",
                  "Properties": {"LaunchTemplate": {"Id": {"Ref": "Lt"}}, "InstanceTypes": ["r5.large"]}},
        "Box": {"Type": "AWS::EC2::Instance", "Properties": {"LaunchTemplate": BY_ID}},
        "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"Tags": [{"Key": "k", "Value": {"Ref": "Lt"}}]}},
    }
    assert launch_template_users(resources, "Lt") == [
        LaunchTemplateUse("Plain", "AWS::AutoScaling::AutoScalingGroup"),
        LaunchTemplateUse("Mixed", "AWS::AutoScaling::AutoScalingGroup", ("m5.xlarge", None)),
        LaunchTemplateUse("Nodes", "AWS::EKS::Nodegroup", ("r5.large",)),
        LaunchTemplateUse("Box", "AWS::EC2::Instance"),
    ]
    assert launch_template_users(resources, "Arm") == [
        LaunchTemplateUse("Mixed", "AWS::AutoScaling::AutoScalingGroup", ("c7g.large",))
    ]


def test_a_mixed_policy_without_overrides_of_its_own_launches_the_templates_type():
    mixed = {"MixedInstancesPolicy": {"LaunchTemplate": {"LaunchTemplateSpecification": BY_ID, "Overrides": [
        {"InstanceType": "c7g.large", "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "Arm"}}}]}}}
    resources = {"Lt": lt(), "Group": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": mixed}}
    assert launch_template_users(resources, "Lt") == [
        LaunchTemplateUse("Group", "AWS::AutoScaling::AutoScalingGroup")
    ]


def test_an_instance_finds_its_template_by_name_as_require_imdsv2_writes_it():
    spec = {"LaunchTemplateName": "WebLaunchTemplate", "Version": "1"}
    resources = {
        "Other": lt("ApiLaunchTemplate"),
        "Web": lt("WebLaunchTemplate"),
        "Box": {
            "Type": "AWS::EC2::Instance",
            "Properties": {"InstanceType": "t3.micro", "LaunchTemplate": spec},
        },
    }
    assert launch_template_of(resources["Box"], resources) == "Web"
    assert launch_template_users(resources, "Web") == [
        LaunchTemplateUse("Box", "AWS::EC2::Instance", ("t3.micro",))
    ]
    assert launch_template_users(resources, "Other") == []
    assert launch_template_of({"Type": "AWS::EC2::Instance", "Properties": {}}, resources) is None
    assert launch_template_of(resources["Web"], resources) is None  # only an Instance launches from one
