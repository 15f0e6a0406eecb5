#!/usr/bin/env python3
"""Regenerate the bundled instance-memory table from the EC2 API (needs AWS credentials).

Thin wrapper over ``cdk-audit-backlog refresh-types``; every option is passed through, e.g.

    .venv/bin/python scripts/refresh_instance_types.py --region us-east-1 --region eu-west-1

Without ``--output`` it rewrites ``constructs/cdk_audit_backlog/data/instance_memory.txt``; review the
added/removed report and commit the file.
"""

import sys

from cdk_audit_backlog.cli import main

if __name__ == "__main__":
    sys.exit(main(["refresh-types", *sys.argv[1:]]))
