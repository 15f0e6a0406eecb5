"""The documented policy table is what the code computes (regenerate with scripts/policy_table.py), and the
README leads with what a newcomer runs."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_documented_policy_table_matches_the_code():
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "policy_table.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_leads_with_demo_and_test():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        head = f.read(2000)
    assert "make demo" in head and "make test" in head
