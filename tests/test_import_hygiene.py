"""The boundary: the engine never imports Textual; the UI and `--help` never import torch.

Each check runs in a fresh interpreter started outside the checkout, so it sees the
installed `steerchat` namespace only (static contracts: `.importlinter`, `tests/test_layers.py`).
"""

from __future__ import annotations

import subprocess
import sys
import time


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_engine_does_not_import_textual(tmp_path):
    out = _run("import sys, steerchat.engine, steerchat.engine.runtime.session, steerchat.engine.runtime.batch, "
               "steerchat.engine.runtime.sae, steerchat.engine.runtime.steering, steerchat.engine.pipelines.evaluate, "
               "steerchat.engine.pipelines.align.pipeline; "
               "bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]; "
               "assert not bad, bad", tmp_path)
    assert out.returncode == 0, out.stderr


def test_tui_app_does_not_import_torch(tmp_path):
    out = _run("import sys, steerchat.tui.app, steerchat.cli.main, steerchat.store; "
               "assert 'torch' not in sys.modules", tmp_path)
    assert out.returncode == 0, out.stderr


def test_only_the_steerchat_namespace_is_installed(tmp_path):
    for name in ("engine", "tui", "models", "cli", "store"):
        out = _run(f"import {name}", tmp_path)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, f"`import {name}` worked outside the checkout"
    out = _run("import steerchat, steerchat.models; print(steerchat.__version__); "
               "print(steerchat.models.get_entry('smollm2-135m').sae_path)", tmp_path)
    assert out.returncode == 0, out.stderr
    version, sae = out.stdout.split()
    assert version[0].isdigit() and sae.endswith("sae")


def test_help_does_not_import_torch_and_is_quick(tmp_path):
    code = ("import sys, io, contextlib\n"
            "from steerchat.cli.main import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'usage: steerchat' in buf.getvalue()\n"
            "assert 'torch' not in sys.modules and 'textual' not in sys.modules, 'heavy import'\n")
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "steerchat", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert time.perf_counter() - start < 1.0
    assert out.returncode == 0 and out.stdout.startswith("usage: steerchat")


def test_version(tmp_path):
    out = subprocess.run([sys.executable, "-m", "steerchat", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("steerchat ")
