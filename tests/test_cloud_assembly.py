"""The one cloud-assembly reader (stacks, Stages, nested stacks) that impact, report and the check share, on
a hand-made assembly laid out as CDK writes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdk_audit_backlog.cloud_assembly import (
    AssemblyError,
    assembly_stacks,
    assembly_templates,
    nested_stack_templates,
)

HASH = "ab" * 32


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def stack_artifact(template_file: str, name: str, env: str = "aws://unknown-account/unknown-region") -> dict:
    return {"type": "aws:cloudformation:stack", "environment": env,
            "properties": {"templateFile": template_file, "stackName": name}}


@pytest.fixture
def assembly(tmp_path: Path) -> Path:
    out = tmp_path / "cdk.out"
    write(out / "manifest.json", {"artifacts": {
        "Top": stack_artifact("Top.template.json", "TopStack", "aws://123456789012/eu-west-1"),
        "assembly-Prod": {"type": "cdk:cloud-assembly", "properties": {"directoryName": "assembly-Prod"}},
        "Tree": {"type": "cdk:tree"},
    }})
    write(out / "Top.template.json", {"Resources": {
        "ByMetadata": {"Type": "AWS::CloudFormation::Stack",
                       "Metadata": {"aws:asset:path": "TopByMetadata.nested.template.json"}},
        "ByUrl": {"Type": "AWS::CloudFormation::Stack", "Properties": {"TemplateURL": {"Fn::Join": ["", [
            "https://s3.", {"Ref": "AWS::Region"}, ".amazonaws.com/bucket/" + HASH + ".json"]]}}},
    }})
    write(out / "TopByMetadata.nested.template.json", {"Resources": {"Deep": {"Type": "AWS::EC2::Instance"}}})
    write(out / "TopByUrl.nested.template.json", {"Resources": {}})
    write(out / "Top.assets.json", {"files": {HASH: {"source": {"path": "TopByUrl.nested.template.json"}}}})
    write(out / "assembly-Prod" / "manifest.json", {"artifacts": {
        "ProdInner": stack_artifact("ProdInner.template.json", "Prod-Inner", "aws://123456789012/us-east-1")}})
    write(out / "assembly-Prod" / "ProdInner.template.json", {"Resources": {}})
    write(out / "Removed.template.json", {"Resources": {}})  # a stack no longer in the manifest
    return out


def test_stacks_come_from_the_manifests_stages_included(assembly):
    stacks = assembly_stacks(assembly)
    assert [(s.artifact_id, s.stack_name, s.account, s.region) for s in stacks] == [
        ("Top", "TopStack", "123456789012", "eu-west-1"),
        ("ProdInner", "Prod-Inner", "123456789012", "us-east-1"),
    ]
    assert set(stacks[0].template["Resources"]) == {"ByMetadata", "ByUrl"}


TEMPLATES = [
    "Top.template.json",
    "TopByMetadata.nested.template.json",
    "TopByUrl.nested.template.json",
    "assembly-Prod/ProdInner.template.json",
]


def test_templates_are_the_stacks_and_their_nested_stacks_not_every_file(assembly):
    found = assembly_templates(assembly)
    assert [t.name for t in found] == TEMPLATES
    assert [t.path.resolve() for t in found] == [(assembly / name).resolve() for name in TEMPLATES]


def test_templates_of_an_assembly_named_relative_to_the_working_directory(assembly, monkeypatch):
    monkeypatch.chdir(assembly.parent)  # `cdk-audit-backlog report cdk.out`
    assert [t.name for t in assembly_templates(Path("cdk.out"))] == TEMPLATES


def test_nested_stacks_by_asset_metadata_and_by_template_url(assembly):
    top = assembly / "Top.template.json"
    resources = json.loads(top.read_text())["Resources"]
    assert sorted(Path(p).name for p in nested_stack_templates(str(top), resources)) == [
        "TopByMetadata.nested.template.json", "TopByUrl.nested.template.json"]
    # A nested stack whose file is not there (or is the template itself) is not followed.
    assert (
        list(
            nested_stack_templates(
                str(top),
                {
                    "Self": {
                        "Type": "AWS::CloudFormation::Stack",
                        "Metadata": {"aws:asset:path": "Top.template.json"},
                    },
                    "Gone": {
                        "Type": "AWS::CloudFormation::Stack",
                        "Metadata": {"aws:asset:path": "Gone.json"},
                    },
                },
            )
        )
        == []
    )


def test_a_directory_of_template_files_without_a_manifest(tmp_path):
    write(tmp_path / "b" / "B.template.json", {"Resources": {}})
    write(tmp_path / "A.template.json", {"Resources": {}})
    assert [t.path.name for t in assembly_templates(tmp_path)] == ["A.template.json", "B.template.json"]
    with pytest.raises(AssemblyError, match="has no manifest.json"):
        assembly_stacks(tmp_path)


def test_what_cannot_be_read_is_named(tmp_path):
    with pytest.raises(AssemblyError, match="is not a directory"):
        assembly_templates(tmp_path / "nowhere")
    with pytest.raises(AssemblyError, match="no \\*.template.json under"):
        assembly_templates(tmp_path)
    write(tmp_path / "manifest.json", {"artifacts": {"S": stack_artifact("S.template.json", "S")}})
    (tmp_path / "S.template.json").write_text("{not json")
    for read in (assembly_stacks, assembly_templates):
        with pytest.raises(AssemblyError, match="S.template.json: "):
            read(tmp_path)
    write(tmp_path / "manifest.json", {"artifacts": {}})
    for read in (assembly_stacks, assembly_templates):
        with pytest.raises(AssemblyError, match="no stacks in"):
            read(tmp_path)
