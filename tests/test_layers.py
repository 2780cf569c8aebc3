"""The static import contracts in .importlinter, checked by import-linter's `lint-imports`.

setup.py maps the top-level folders engine/, tui/ and models/ under `steerchat`, but grimp (the
graph builder behind import-linter) only walks the folder of the root package, where it would find
cli/ and store/ alone. So the check runs on a tree of symlinks that puts every folder back under
steerchat/, with that tree first on the path. By hand, the same thing:

    T=$(mktemp -d); mkdir $T/steerchat; ln -s $PWD/steerchat/* $T/steerchat/
    ln -s $PWD/engine $PWD/tui $PWD/models $T/steerchat/
    (cd $T && PYTHONPATH=$T lint-imports $OLDPWD/.importlinter --no-cache)
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
MAPPED = {"engine": "engine", "tui": "tui", "models": "models"}  # steerchat.<name> -> folder (setup.py)


def _contracts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    prefix = "importlinter:contract:"
    return {s[len(prefix):]: parser[s]["name"] for s in parser.sections() if s.startswith(prefix)}


CONTRACTS = _contracts()


def _lint_imports() -> str | None:
    here = Path(sys.executable).parent / "lint-imports"
    return str(here) if here.exists() else shutil.which("lint-imports")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install import-linter, or the `test` extra)")
    tree = tmp_path_factory.mktemp("import-tree")
    pkg = tree / "steerchat"
    pkg.mkdir()
    for entry in (ROOT / "steerchat").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([exe, str(CONFIG), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout + done.stderr
    assert "Contracts:" in out, f"lint-imports did not run its contracts (exit {done.returncode}):\n{out}"
    return out


def _status(report: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)$", report, re.M)
    assert found, f"contract {name!r} is missing from the report:\n{report}"
    return found.group(1)


def test_every_contract_is_in_the_report(report):
    assert CONTRACTS and re.search(rf"Contracts: \d+ kept, \d+ broken", report)
    for name in CONTRACTS.values():
        _status(report, name)


@pytest.mark.parametrize("key", sorted(CONTRACTS))
def test_contract_is_kept(report, key):
    assert _status(report, CONTRACTS[key]) == "KEPT", report
