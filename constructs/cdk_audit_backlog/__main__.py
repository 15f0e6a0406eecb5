"""``python -m cdk_audit_backlog``: the operator CLI (see ``cli.py``)."""

import sys

from .cli import main

sys.exit(main())
