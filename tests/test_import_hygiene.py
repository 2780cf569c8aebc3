"""The boundary: the engine never imports Textual; the UI and `--help` never import torch."""

from __future__ import annotations

import subprocess
import sys
import time


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_engine_does_not_import_textual():
    _run("import sys, engine, engine.session, engine.batch, engine.sae, engine.steering; "
         "bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]; "
         "assert not bad, bad")


def test_tui_app_does_not_import_torch():
    _run("import sys, tui.app, tui.cli; assert 'torch' not in sys.modules")


def test_help_does_not_import_torch_and_is_quick():
    code = ("import sys, io, contextlib\n"
            "from tui.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'usage: steerchat' in buf.getvalue()\n"
            "assert 'torch' not in sys.modules and 'textual' not in sys.modules, 'heavy import'\n")
    _run(code)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tui.cli", "--help"], check=True, capture_output=True, timeout=60)
    assert time.perf_counter() - start < 1.0
