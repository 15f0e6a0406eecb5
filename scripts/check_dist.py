#!/usr/bin/env python3
"""Checks a built release: the wheel and the sdist hold every file of the package, byte for byte.

`python scripts/check_dist.py DIST_DIR` (what `make dist` runs after `twine check`) exits 1 and names
each missing or different file. Besides its modules the package reads files at run time that only
package data ships (pyproject.toml, ``[tool.setuptools.package-data]``): ``py.typed`` for type
checkers, the instance-type memory tables in ``data/``, and the boot script(s) in ``userdata/`` (the
package's ``userdata`` is a symbolic link to the repository's ``userdata/``, so the shell stays where
shellcheck and the boot tests find it). The expected list is every file under the package directory
(following that link) except bytecode, so a file added there later, e.g. a new ``.sh``, is checked too.
"""

from __future__ import annotations

import os
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cdk_audit_backlog"
SOURCE_ROOT = "constructs"


def package_files(root: Path = ROOT) -> Dict[str, bytes]:
    """The package as the checkout holds it: path inside the package directory -> bytes."""
    base = root / SOURCE_ROOT / PACKAGE
    found = {}
    for directory, subdirs, files in os.walk(base, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in files:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(directory) / name
            found[path.relative_to(base).as_posix()] = path.read_bytes()
    return found


def wheel_files(wheel: Path) -> Dict[str, bytes]:
    """The package as the wheel installs it (its .dist-info left out)."""
    with zipfile.ZipFile(wheel) as archive:
        prefix = PACKAGE + "/"
        return {n[len(prefix):]: archive.read(n) for n in archive.namelist() if n.startswith(prefix)}


def sdist_files(sdist: Path) -> Dict[str, bytes]:
    """The package as the sdist holds it (under its source root, where the wheel is built from)."""
    with tarfile.open(sdist) as archive:
        found = {}
        for member in archive.getmembers():
            # <name>-<version>/constructs/cdk_audit_backlog/<path>
            parts = member.name.split("/", 3)
            if member.isfile() and len(parts) == 4 and parts[1:3] == [SOURCE_ROOT, PACKAGE]:
                found[parts[3]] = archive.extractfile(member).read()
        return found


def compare(what: str, expected: Dict[str, bytes], shipped: Dict[str, bytes]) -> List[str]:
    """One line per file that is missing from, different in or only in ``shipped``."""
    problems = [f"{what}: missing {p}" for p in sorted(set(expected) - set(shipped))]
    problems += [f"{what}: differs from the checkout: {p}" for p in sorted(set(expected) & set(shipped))
                 if expected[p] != shipped[p]]
    problems += [f"{what}: not in the checkout: {p}" for p in sorted(set(shipped) - set(expected))]
    return problems


def check(dist: Path, root: Path = ROOT) -> List[str]:
    """The problems with the one wheel and the one sdist in ``dist`` (empty when there are none)."""
    wheels, sdists = sorted(dist.glob(f"{PACKAGE}-*.whl")), sorted(dist.glob(f"{PACKAGE}-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist}: expected one wheel and one sdist, found {[p.name for p in wheels + sdists]}"]
    expected = package_files(root)
    # The files the package reads at run time: a checkout without them is not one to release from.
    for required in ("py.typed", "data/instance_memory.txt", "userdata/audit-backlog.sh"):
        if required not in expected:
            return [f"the checkout has no {PACKAGE}/{required}"]
    return compare(wheels[0].name, expected, wheel_files(wheels[0])) + compare(
        sdists[0].name, expected, sdist_files(sdists[0])
    )


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: check_dist.py DIST_DIR", file=sys.stderr)
        return 2
    dist = Path(argv[0])
    problems = check(dist)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    shipped = package_files()
    data = sorted(p for p in shipped if p.startswith(("data/", "userdata/")))
    print(f"check_dist: {dist}: wheel and sdist hold all {len(shipped)} files of {PACKAGE} "
          f"({', '.join(['py.typed'] + data)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
