"""One import root: `pip install lstmpipe` gives `import lstmpipe` and nothing else (STYLE §19).

The folders the design fixes (lib/, tasks/, flows/) are mapped onto `lstmpipe.lib`,
`lstmpipe.tasks` and `lstmpipe.flows` by pyproject.toml's package-dir, with the packages
listed explicitly: a new sub-package missing from that list would be missing from the
wheel, so the list is checked against the tree.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Every folder holding an __init__.py under the mapped folders, by its dotted name."""
    found = {}
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder).parts
            found[".".join((package, *relative))] = init.parent
    return found


def test_every_package_folder_is_listed_and_every_listed_package_exists() -> None:
    assert sorted(SETUPTOOLS["packages"]) == sorted(_package_folders())


def test_no_module_imports_the_old_top_level_names() -> None:
    """`lib`, `tasks` and `flows` are generic names other distributions install too."""
    pattern = re.compile(r"^\s*(from|import) (lib|tasks|flows)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("lib", "tasks", "flows", "tests", "bench")
        for path in (ROOT / top).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


@pytest.mark.slow  # builds the wheel: ~10 s
def test_the_wheel_holds_only_the_lstmpipe_import_root(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("lstmpipe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "lstmpipe",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    modules = {name for name in names if name.endswith(".py")}
    for package, folder in _package_folders().items():
        for source in folder.glob("*.py"):
            assert f"{package.replace('.', '/')}/{source.name}" in modules
    assert "lstmpipe/lib/sources/kinds/video.py" in modules
