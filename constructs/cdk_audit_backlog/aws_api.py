"""AWS plumbing shared by the commands that call AWS (``refresh-types``, ``verify``, ``impact``): clients'
retries, botocore's errors, and the template CloudFormation holds for a deployed stack.

boto3 is imported lazily (``pip install 'cdk-audit-backlog[cli]'``), so ``plan`` and ``report`` work
without it. botocore's errors become one-line :class:`CliError` s.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from .errors import CliError

#: Attempts per AWS call (botocore's standard retry mode: exponential backoff with jitter on throttling).
MAX_ATTEMPTS = 10


class NotFound(CliError):
    """AWS says the resource is gone (``InvalidInstanceID.NotFound`` and the like)."""


def boto3_module() -> Any:
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 is in the dev requirements
        raise CliError("this command needs boto3: pip install 'cdk-audit-backlog[cli]'") from None
    return boto3


def client_config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, max_pool_connections=32)


def aws_errors(what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and turn botocore's errors into one-line CliErrors."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        return fn()
    except (NoCredentialsError, PartialCredentialsError):
        raise CliError(
            f"{what}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run where an instance role is available)"
        ) from None
    except NoRegionError:
        raise CliError(f"{what}: no region: pass --region or set AWS_REGION") from None
    except EndpointConnectionError as e:
        raise CliError(f"{what}: cannot reach {e.kwargs.get('endpoint_url', 'the endpoint')}") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "")
        msg = err.get("Message", "")
        if code in {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}:
            raise CliError(
                f"{what}: AWS kept throttling ({code}) after botocore's retries with backoff; "
                "retry later or lower --max-workers"
            ) from None
        if code == "ValidationError" and "does not exist" in msg:
            raise CliError(f"{what}: {msg}") from None
        if code.endswith(".NotFound"):
            raise NotFound(f"{what}: {code}: {msg}") from None
        if code in {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                    "ExpiredTokenException"}:
            raise CliError(f"{what}: the AWS credentials were rejected ({code}: {msg})") from None
        raise CliError(f"{what}: {code}: {msg}") from None


def deployed_template(cfn: Any, stack_name: str) -> Optional[Dict[str, Any]]:
    """The template CloudFormation holds for ``stack_name`` (``TemplateStage=Original``), None if there is no
    such stack; ValueError when it is not a JSON object (a template deployed as YAML)."""
    from botocore.exceptions import ClientError

    try:
        body = cfn.get_template(StackName=stack_name, TemplateStage="Original")["TemplateBody"]
    except ClientError as e:
        err = e.response.get("Error", {})
        if err.get("Code") == "ValidationError" and "does not exist" in err.get("Message", ""):
            return None
        raise
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return dict(body)
