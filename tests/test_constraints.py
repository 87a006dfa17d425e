"""CI and the README install the versions the project keeps in ``constraints-known-good.txt``
(issue 46, point 1: a release upstream turned main red overnight). The file must pin every
dependency the project declares, at a version its range admits, and both install lines must
use it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints-known-good.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["test"], *extras["docs"]]]


def test_every_declared_dependency_is_pinned_within_its_range():
    pinned = pins()
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is declared but not in {CONSTRAINTS.name}: run .ci/refresh-constraints"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (requirement, pinned[name])


def test_torch_is_pinned_without_a_build_label():
    """``torch==2.13.0+cpu`` would refuse the CUDA build a GPU user installed first."""
    assert re.fullmatch(r"[\d.]+", pins()["torch"])


def test_ci_and_the_readme_install_with_the_constraints():
    install = re.compile(r"pip install[^\n&]*-e '\.\[[a-z,]+\]'[^\n&]*-c constraints-known-good\.txt")
    assert install.search((REPO / ".ci" / "run").read_text())
    assert install.search((REPO / "README.md").read_text())
