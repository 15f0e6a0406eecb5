"""TuningOptions: one validated value every carrier takes, and the per-app state of the aspect."""

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template
from hypothesis import given
from hypothesis import strategies as st

from cdk_audit_backlog import AuditBacklog, BacklogPolicy, TuningOptions
from cdk_audit_backlog.association import AssociationOptions, AuditBacklogAssociation
from cdk_audit_backlog.image_builder import AuditBacklogComponent
from cdk_audit_backlog.karpenter import karpenter_user_data
from cdk_audit_backlog.registry import AppRegistry
from cdk_audit_backlog.user_data import BlockInputs, render_block

BAD_OPTIONS = [
    (
        {"backlog_limit": 0},
        "backlog_limit must be an integer from 1 to 2147483647, got 0 (auditctl -b 0 means no limit at all, "
        "which this library does not set; an image's existing 0 is kept)",
    ),
    ({"backlog_limit": 1.5}, "backlog_limit must be an integer from 1 to 2147483647, got 1.5"),
    ({"policy": "default"}, "policy must be a BacklogPolicy, got 'default'"),
    ({"backlog_wait_time": 60001}, "backlog_wait_time must be an integer from 0 to 60000, got 60001"),
    ({"allow_lower": None}, "allow_lower must be True or False, got None"),
    ({"install_auditd": "yes"}, "install_auditd must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("kwargs,message", BAD_OPTIONS)
def test_every_carrier_refuses_a_bad_option_with_the_same_text(kwargs, message):
    """The aspect, the association, the component and the Karpenter helper all validate through TuningOptions:
    one text per option, whichever entry point the user called."""
    makers = {
        "TuningOptions": lambda: TuningOptions(**kwargs),
        "AuditBacklog": lambda: AuditBacklog(**kwargs),
        "AuditBacklogAssociation": lambda: AuditBacklogAssociation(cdk.Stack(cdk.App(), "S"), "A", **kwargs),
        "AuditBacklogComponent": lambda: AuditBacklogComponent(cdk.Stack(cdk.App(), "S"), "C", **kwargs),
        "karpenter_user_data": lambda: karpenter_user_data("AL2023", **kwargs),
    }
    component_options = {"backlog_limit", "policy", "backlog_wait_time", "allow_lower"}
    if not set(kwargs) <= component_options:  # the component has no install_auditd (images are built with it)
        del makers["AuditBacklogComponent"]
    for name, make in makers.items():
        with pytest.raises(ValueError) as raised:
            make()
        # A function (not a construct) says its own name first: the error is read far from the call.
        expected = f"karpenter_user_data: {message}" if name == "karpenter_user_data" else message
        assert str(raised.value) == expected, name


def test_defaults_are_normalized_so_equal_options_compare_equal():
    import numpy as np

    assert TuningOptions().policy == BacklogPolicy()
    assert TuningOptions(policy=None) == TuningOptions(policy=BacklogPolicy())
    numpy_made = TuningOptions(backlog_limit=np.int64(4096), backlog_wait_time=np.int32(0))
    assert numpy_made == TuningOptions(backlog_limit=4096, backlog_wait_time=0)
    assert type(numpy_made.backlog_limit) is int and type(numpy_made.backlog_wait_time) is int


@given(
    limit=st.one_of(st.none(), st.integers(1, 2**31 - 1)),
    boot_unit=st.booleans(),
    cmdline=st.booleans(),
    wait=st.one_of(st.none(), st.integers(0, 60000)),
)
def test_the_aspect_renders_exactly_what_its_options_say(limit, boot_unit, cmdline, wait):
    aspect = AuditBacklog(
        backlog_limit=limit, boot_unit=boot_unit, kernel_cmdline=cmdline, backlog_wait_time=wait
    )
    options = TuningOptions(
        backlog_limit=limit, boot_unit=boot_unit, kernel_cmdline=cmdline, backlog_wait_time=wait
    )
    assert aspect.options == options
    block = render_block(aspect.block_inputs(limit, "unknown"))
    assert block == render_block(BlockInputs.for_options(options, target=limit, source="unknown"))
    expected_unit = "off" if not boot_unit else ("fixed" if limit is not None else "auto")
    assert (f"CAB_UNIT={expected_unit}" in block) == (expected_unit != "off")
    assert f"CAB_KERNEL_CMDLINE={int(cmdline)}\n" in block
    assert f"CAB_WAIT={'' if wait is None else wait}\n" in block


def test_association_from_options_equals_the_keyword_form():
    options = TuningOptions(backlog_limit=4096, backlog_wait_time=0, allow_lower=True)
    fleet = AssociationOptions(schedule="rate(2 hours)")
    app = cdk.App()
    by_options = AuditBacklogAssociation.from_options(cdk.Stack(app, "A"), "Tune", options, fleet)
    by_keywords = AuditBacklogAssociation(
        cdk.Stack(app, "B"), "Tune", backlog_limit=4096, backlog_wait_time=0, allow_lower=True,
        schedule="rate(2 hours)",
    )
    assert by_options.run_command == by_keywords.run_command
    assert "CAB_UNIT" not in "\n".join(by_options.run_command)  # the association never installs the unit
    a = Template.from_stack(cdk.Stack.of(by_options)).to_json()
    b = Template.from_stack(cdk.Stack.of(by_keywords)).to_json()
    assert a == b
    with pytest.raises(ValueError, match="tuning must be a TuningOptions"):
        AuditBacklogAssociation.from_options(cdk.Stack(app, "C"), "Tune", {"backlog_limit": 4096})


def _instance_app():
    app = cdk.App()
    stack = cdk.Stack(app, "S", env=cdk.Environment(account="111111111111", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0)
    ec2.Instance(
        stack, "Web", vpc=vpc, instance_type=ec2.InstanceType("t3.micro"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    )
    return app, stack


def test_decided_once_state_lives_on_each_app_not_in_the_process():
    first_app, first = _instance_app()
    second_app, second = _instance_app()
    AuditBacklog.apply_to(first_app)
    AuditBacklog.apply_to(second_app, backlog_limit=4096)
    t1 = Template.from_stack(first).find_resources("AWS::EC2::Instance")
    t2 = Template.from_stack(second).find_resources("AWS::EC2::Instance")
    (m1,), (m2,) = ([r["Metadata"]["cdk-audit-backlog"] for r in t.values()] for t in (t1, t2))
    assert m1["limit"] == 1024 and m2["limit"] == 4096
    r1, r2 = AppRegistry.of(first_app), AppRegistry.of(second_app)
    assert r1 is not r2
    assert len(r1.tunings) == 1 and len(r2.tunings) == 1
    assert set(r1.tunings).isdisjoint(r2.tunings)
    assert AppRegistry.of(first) is r1  # found from any construct of the app
