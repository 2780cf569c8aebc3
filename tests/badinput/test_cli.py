"""Bad input on the command line: one `steerchat: ...` line and exit status 1 (argparse's
usage error and exit 2 for a bad flag value), never a traceback, nothing valid lost.

Each case runs `steerchat.cli.main.main([...])` in-process, or `python -m steerchat` in a
subprocess where standard input matters, on the tiny random Phi-3 of tests/conftest.py
and tiny random SAEs. conftest.py in this folder reports how many cases ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from steerchat.cli.main import main

GARBAGE = bytes(range(256)) * 8 + b"\xff\xfe\x80\x81" * 64  # not UTF-8 anywhere near the start
KEPT = "an existing file that must not be touched\n"


class W:
    """A case's workspace: the tiny model, a valid tiny SAE with features.json, and files."""

    def __init__(self, root: Path, model: Path):
        from steerchat.engine.core.featureset import FeatureSet, RefusalFeature
        from steerchat.engine.runtime.sae import SAE

        self.root, self.model = root, str(model)
        self.sae_dir = root / "sae"
        SAE.random(d_in=64, d_sae=128, k=8, hook_layer=1, seed=0).save(self.sae_dir)
        FeatureSet(refusal_features=[RefusalFeature(2, 1.5)]).save(self.sae_dir)
        self.sae = str(self.sae_dir)
        self.garbage = self.file("garbage.bin", GARBAGE)
        self.kept = self.file("kept.txt", KEPT)
        self.prompts = self.file("prompts.txt", "How do I bake bread?\nWhat is the capital of France?\n")
        self.text = self.file("text.txt", "A paragraph of plain text.\n\nAnother one.\n")
        self.empty_text = self.file("empty.txt", "\n\n  \n")

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return str(path)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def sae_with(self, name: str, cfg: dict | None = None, features: str | None = None) -> str:
        """A copy of the valid SAE with cfg.json keys replaced and/or features.json's text replaced."""
        import shutil

        folder = self.root / name
        shutil.copytree(self.sae_dir, folder)
        if cfg:
            data = json.loads((folder / "cfg.json").read_text())
            data.update(cfg)
            (folder / "cfg.json").write_text(json.dumps(data))
        if features is not None:
            (folder / "features.json").write_text(features)
        return str(folder)

    def manifest(self, name: str = "acts") -> str:
        """An activations folder with a finished manifest (d_in 64) and no shards."""
        from steerchat.engine.pipelines.activations import Manifest

        folder = self.root / name
        folder.mkdir()
        Manifest(config={}, d_in=64, complete=True).save(folder)
        return str(folder)


@dataclass
class Case:
    id: str
    argv: Callable[[W], list[str]]
    fault: str  # a substring of the message that names the fault
    rc: int = 1
    stdin: Callable[[W], bytes] | None = None  # runs in a subprocess with this on standard input
    kept: Callable[[W], list[str]] = lambda w: [w.kept]  # files that must be unchanged afterwards
    absent: Callable[[W], list[str]] = lambda w: []  # paths that must not have been created
    xfail: str | None = None
    within_s: float | None = None  # must answer within this many seconds


def _ask(w: W, *extra: str) -> list[str]:
    return ["ask", "hello", "--model", w.model, "--sae", w.sae, "--max-tokens", "4", *extra]


def _ask_sae(w: W, sae: str, *extra: str) -> list[str]:
    return ["ask", "hello", "--model", w.model, "--sae", sae, "--max-tokens", "4", *extra]


def _eval(w: W, *extra: str) -> list[str]:
    return ["eval", "--model", w.model, "--sae", w.sae, "--sets", "unsafe", "--unsafe", w.prompts,
            "--limit", "1", "--max-new-tokens", "2", "--no-plot", "--out", w.path("eval-out"), *extra]


def _collect(w: W, *extra: str) -> list[str]:
    return ["sae", "collect", "--model", w.model, "--layer", "1", "--out", w.path("acts"), *extra]


def _train(w: W, *extra: str) -> list[str]:
    return ["sae", "train", "--activations", w.path("acts"), "--out", w.path("sae-out"), "--model", w.model,
            "--eval-docs", "0", "--device", "cpu", *extra]


def _find(w: W, *extra: str) -> list[str]:
    return ["features", "find-refusal", "--model", w.model, "--sae", w.sae, "--harmful", w.prompts,
            "--val-harmful", w.prompts, "--val-harmless", w.prompts, "--out", w.path("find-out"), *extra]


def _sweep(w: W, *extra: str) -> list[str]:
    return ["features", "sweep", "--model", w.model, "--sae", w.sae, "--harmful", w.prompts,
            "--harmless", w.prompts, "--max-new-tokens", "2", *extra]


def _align(w: W, stage: str, *extra: str) -> list[str]:
    return ["align", stage, "--model", w.model, "--work", w.path("work"), *extra]


FEATURES_OK = {"refusal_features": [{"feature": 2, "reference_activation": 1.5}]}


def _features(**patch) -> str:
    return json.dumps({**FEATURES_OK, **patch})


def _feature(feature=2, ref=1.5) -> str:
    return json.dumps({"refusal_features": [{"feature": feature, "reference_activation": ref}]})


CASES: list[Case] = [
    # ---- numbers refused while parsing (argparse: usage, exit 2)
    Case("threads-negative", lambda w: _eval(w, "--threads", "-2"), "--threads", rc=2),
    Case("align-threads-negative", lambda w: _align(w, "finetune", "--threads", "-2"), "--threads", rc=2),
    Case("ask-seed-huge", lambda w: _ask(w, "--seed", "99999999999999999999999"), "seed must be between", rc=2),
    Case("ask-seed-negative", lambda w: _ask(w, "--seed", "-1"), "seed must be between", rc=2),
    Case("ask-temperature-inf", lambda w: _ask(w, "--temperature", "inf"), "finite", rc=2),
    Case("ask-temperature-negative", lambda w: _ask(w, "--temperature", "-1"), "at least 0", rc=2),
    Case("ask-max-tokens-zero", lambda w: _ask(w, "--max-tokens", "0"), "at least 1", rc=2),
    Case("train-d-sae-negative", lambda w: _train(w, "--d-sae", "-5"), "--d-sae", rc=2),
    Case("train-k-zero", lambda w: _train(w, "--k", "0"), "--k", rc=2),
    Case("train-lr-nan", lambda w: _train(w, "--lr", "nan"), "finite", rc=2),
    Case("train-tokens-negative", lambda w: _train(w, "--tokens", "-100"), "--tokens", rc=2),
    Case("train-holdout-2", lambda w: _train(w, "--holdout", "2"), "below 1", rc=2),
    Case("train-device-quantum", lambda w: _train(w, "--device", "quantum"), "not a device", rc=2),
    Case("collect-device-quantum", lambda w: _collect(w, "--texts", w.text, "--device", "quantum"), "not a device", rc=2),
    Case("collect-batch-size-negative", lambda w: _collect(w, "--texts", w.text, "--collect-batch-size", "-1"),
         "--collect-batch-size", rc=2),
    Case("collect-layer-negative", lambda w: _collect(w, "--texts", w.text, "--layer", "-1"), "--layer", rc=2),
    Case("finetune-rank-zero", lambda w: _align(w, "finetune", "--rank", "0"), "--rank", rc=2),
    Case("finetune-lr-nan", lambda w: _align(w, "finetune", "--lr", "nan"), "finite", rc=2),
    Case("finetune-steps-negative", lambda w: _align(w, "finetune", "--steps", "-1"), "--steps", rc=2),
    Case("induce-limit-negative", lambda w: _align(w, "induce", "--limit", "-3", "--instructions", w.prompts),
         "--limit", rc=2),
    Case("eval-batch-size-negative", lambda w: _eval(w, "--batch-size", "-4"), "--batch-size", rc=2),
    Case("eval-batch-size-zero", lambda w: _eval(w, "--batch-size", "0"), "at least 1", rc=2),
    Case("eval-strengths-nan", lambda w: _eval(w, "--strengths", "nan"), "--strengths", rc=2),
    Case("eval-strengths-negative", lambda w: _eval(w, "--strengths", "-3"), "at least 0", rc=2),
    Case("eval-limit-negative", lambda w: _eval(w, "--limit", "-1"), "--limit", rc=2),
    Case("eval-open-positive", lambda w: _eval(w, "--open", "0,2"), "at most 0", rc=2),
    Case("eval-open-without-gate", lambda w: _eval(w, "--open"), "needs a harm gate"),
    Case("eval-describe-without-levels", lambda w: _eval(w, "--describe"), "--levels all",
         absent=lambda w: [w.path("eval-out")]),
    Case("eval-describe-with-calibrate", lambda w: _eval(w, "--describe", "--levels", "all", "--calibrate"),
         "without --calibrate", absent=lambda w: [w.path("eval-out")]),
    Case("eval-features-abc", lambda w: _eval(w, "--features", "abc"), "comma-separated whole numbers", rc=2),
    Case("find-sizes-zero", lambda w: _find(w, "--sizes", "4,0"), "--sizes", rc=2),
    Case("sweep-points-bad", lambda w: _sweep(w, "--points", "0,xg"), "--points", rc=2),
    # ---- output paths checked before the work starts
    Case("eval-out-is-a-file", lambda w: _eval(w, "--out", w.kept), "is a file"),
    Case("collect-out-is-a-file", lambda w: _collect(w, "--texts", w.text, "--out", w.kept), "is a file"),
    Case("train-out-is-a-file", lambda w: _train(w, "--out", w.kept, "--texts", w.text), "is a file",
         absent=lambda w: [w.path("acts")]),
    Case("train-out-is-a-file-after-collection", lambda w: ["sae", "train", "--activations", w.manifest(),
                                                             "--out", w.kept, "--device", "cpu"], "is a file"),
    Case("align-work-is-a-file", lambda w: ["align", "induce", "--model", w.model, "--work", w.kept,
                                            "--instructions", w.prompts], "is a file"),
    Case("finetune-out-is-a-file", lambda w: _align(w, "finetune", "--out", w.kept), "is a file",
         absent=lambda w: [w.path("work")]),
    Case("sweep-json-unwritable", lambda w: _sweep(w, "--json", "/proc/nope/x.json"), "/proc/nope/x.json"),
    Case("sweep-json-under-a-file", lambda w: _sweep(w, "--json", w.kept + "/x.json"), "is a file"),
    Case("find-out-is-a-file", lambda w: _find(w, "--out", w.kept), "is a file"),
    # ---- binary and empty input
    Case("collect-pairs-binary", lambda w: _collect(w, "--pairs", w.garbage), "garbage.bin",
         absent=lambda w: [w.path("acts")]),
    Case("collect-texts-binary", lambda w: _collect(w, "--texts", w.garbage), "not valid UTF-8",
         absent=lambda w: [w.path("acts")]),
    Case("collect-texts-empty", lambda w: _collect(w, "--texts", w.empty_text), "holds no text",
         absent=lambda w: [w.path("acts")]),
    Case("collect-layer-999", lambda w: _collect(w, "--texts", w.text, "--layer", "999"), "2 decoder layers",
         absent=lambda w: [w.path("acts")]),
    Case("induce-mistakes-binary", lambda w: _align(w, "induce", "--mistakes", w.garbage), "not valid UTF-8"),
    Case("finetune-data-binary", lambda w: _align(w, "finetune", "--data", w.garbage), "not valid UTF-8"),
    Case("ask-stdin-binary", lambda w: ["ask", "-", "--model", w.model, "--sae", "none"], "not valid UTF-8",
         stdin=lambda w: GARBAGE),
    Case("ask-stdin-empty", lambda w: ["ask", "-", "--model", w.model, "--sae", "none"], "empty",
         stdin=lambda w: b""),
    # ---- the model's context
    Case("ask-stdin-1mb", lambda w: ["ask", "-", "--model", w.model, "--sae", "none", "--max-tokens", "4"],
         "far too long", stdin=lambda w: b"tell me a story. " * 62_000, within_s=60),
    Case("ask-system-100kb", lambda w: _ask(w, "--system", "be brief. " * 10_000), "far too long", within_s=30),
    Case("ask-over-context", lambda w: ["ask", "x" * 600, "--model", w.model, "--sae", "none", "--max-tokens", "4"],
         "context of 512 tokens"),
    Case("ask-no-room-for-reply", lambda w: ["ask", "x" * 400, "--model", w.model, "--sae", "none",
                                             "--max-tokens", "200"], "--max-tokens"),
    # ---- model paths
    Case("ask-model-etc-passwd", lambda w: ["ask", "hi", "--model", "/etc/passwd", "--sae", "none"],
         "/etc/passwd is a file but not a GGUF model"),
    Case("download-etc-passwd", lambda w: ["download", "/etc/passwd"], "/etc/passwd is a file but not a GGUF model"),
    Case("download-missing-gguf", lambda w: ["download", "x.gguf"], "No GGUF file at x.gguf"),
    Case("download-bad-id", lambda w: ["download", "bad//id with spaces"], "not a registered model"),
    Case("ask-model-not-gguf-named-gguf", lambda w: ["ask", "hi", "--model", w.file("fake.gguf", b"PK\x03\x04 zip"),
                                                     "--sae", "none"], "fake.gguf is a file but not a GGUF model",
         kept=lambda w: [w.kept, w.path("fake.gguf")]),
    Case("ask-model-config-hidden-size-word",
         lambda w: ["ask", "hi", "--sae", "none", "--model", str(Path(w.file(
             "bad-model/config.json", json.dumps({"model_type": "llama", "hidden_size": "big"}))).parent)],
         "'hidden_size' expected int, got str", kept=lambda w: [w.kept, w.path("bad-model/config.json")]),
    # ---- SAE and features files of the wrong type
    Case("sae-hook-layer-word", lambda w: _ask_sae(w, w.sae_with("s1", cfg={"hook_layer": "twelve", "hook_name": ""})),
         "'hook_layer'"),
    Case("sae-activation-scale-word", lambda w: _ask_sae(w, w.sae_with("s2", cfg={"activation_scale": "big"})),
         "'activation_scale'"),
    Case("sae-activation-scale-nan", lambda w: _ask_sae(w, w.sae_with("s3", cfg={"activation_scale": float("nan")})),
         "'activation_scale'"),
    Case("sae-activation-scale-zero", lambda w: _ask_sae(w, w.sae_with("s4", cfg={"activation_scale": 0})),
         "'activation_scale'"),
    Case("features-a-list", lambda w: _ask_sae(w, w.sae_with("f1", features="[]")), "expected a JSON object"),
    Case("features-labels-a-list", lambda w: _ask_sae(w, w.sae_with("f2", features=_features(labels=["a"]))),
         "'labels' must be an object"),
    Case("features-index-negative", lambda w: _ask_sae(w, w.sae_with("f3", features=_feature(-1))), "negative"),
    Case("features-index-past-d-sae", lambda w: _ask_sae(w, w.sae_with("f4", features=_feature(128))),
         "feature 128 does not exist"),
    Case("features-reference-nan", lambda w: _ask_sae(w, w.sae_with("f5", features=_feature(ref=float("nan")))),
         "reference_activation"),
    Case("features-not-json", lambda w: _ask_sae(w, w.sae_with("f6", features="{nope")), "features.json"),
    Case("eval-features-index-past-d-sae", lambda w: _eval(w, "--sae", w.sae_with("f7", features=_feature(500))),
         "feature 500 does not exist", absent=lambda w: [w.path("eval-out")]),
    # ---- --replies of find-refusal
    Case("find-replies-missing", lambda w: _find(w, "--replies", w.path("nope.jsonl")), "nope.jsonl: no such file"),
    Case("find-replies-no-reply", lambda w: _find(w, "--replies", w.file("r.jsonl", '{"prompt": "hi"}\n')),
         "r.jsonl:1: missing or empty 'reply'"),
    Case("find-replies-bad-json", lambda w: _find(w, "--replies", w.file("r2.jsonl", '{"prompt": "hi", "reply": "x"}\n{oops\n')),
         "r2.jsonl:2: not valid JSON"),
    # ---- SAE sizes that need the collection's width
    Case("train-k-over-d-sae", lambda w: ["sae", "train", "--activations", w.manifest(), "--out", w.path("sae-out"),
                                          "--device", "cpu", "--d-sae", "64", "--k", "1000"], "more active latents",
         absent=lambda w: [w.path("sae-out")]),
    Case("train-d-sae-huge", lambda w: ["sae", "train", "--activations", w.manifest(), "--out", w.path("sae-out"),
                                        "--device", "cpu", "--d-sae", "100000000000"], "choose a smaller --d-sae",
         absent=lambda w: [w.path("sae-out")], within_s=30),
]


@pytest.fixture
def w(tmp_path, tiny_model_dir) -> W:
    return W(tmp_path, tiny_model_dir)


def _run_subprocess(argv: list[str], stdin: bytes, timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "steerchat", *argv], input=stdin, capture_output=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _run_inprocess(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):  # what the interpreter would print
            print(exc.code, file=sys.stderr)
    return rc, capsys.readouterr().err


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, w: W, capsys):
    argv = case.argv(w)
    kept = {p: Path(p).read_bytes() for p in case.kept(w)}
    t0 = time.perf_counter()
    if case.stdin is not None:
        rc, err = _run_subprocess(argv, case.stdin(w), timeout=case.within_s or 120)
    else:
        rc, err = _run_inprocess(argv, capsys)
    elapsed = time.perf_counter() - t0
    assert "Traceback" not in err, err
    assert rc == case.rc, err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.rc == 2:  # argparse: usage lines, then one `steerchat ...: error: ...` line
        assert lines and lines[-1].startswith("steerchat") and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("steerchat: "), err
    assert case.fault in err, err
    for path, content in kept.items():
        assert Path(path).read_bytes() == content, f"{path} was changed"
    for path in case.absent(w):
        assert not Path(path).exists(), f"{path} was created though the command failed"
    if case.within_s is not None:
        assert elapsed < case.within_s, f"took {elapsed:.0f} s"


# ---- what the table cannot say: replies on a terminal, strict JSON, the last-resort handler


class _FakeTrace:
    error = None
    reply = "\x1b[2Jcleared"

    def to_json(self, indent=None):
        return json.dumps({"reply": self.reply, "judge_log_odds": float("nan"), "x": [float("inf")]}, indent=indent)


class _FakeSession:
    steered = None

    def send(self, prompt, on_token=None):
        if on_token:
            on_token(_FakeTrace.reply)
        return _FakeTrace()


@pytest.fixture
def fake_session(monkeypatch):
    import steerchat.engine.runtime.session as session

    monkeypatch.setattr(session, "open_session", lambda *a, **k: _FakeSession())


@pytest.mark.parametrize("tty,raw,shown", [(True, False, "\u241b[2Jcleared"), (True, True, "\x1b[2Jcleared"),
                                            (False, False, "\x1b[2Jcleared")],
                         ids=["terminal-visible", "terminal-raw", "pipe-raw"])
def test_ask_reply_escapes_on_a_terminal(fake_session, monkeypatch, capsys, tty, raw, shown):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    assert main(["ask", "hi", "--model", "unused"] + (["--raw"] if raw else [])) == 0
    assert capsys.readouterr().out == shown + "\n"


def test_ask_json_is_strict_json(fake_session, capsys):
    assert main(["ask", "hi", "--model", "unused", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(out, parse_constant=refuse)
    assert data["judge_log_odds"] is None and data["x"] == [None]


def test_ask_json_on_the_tiny_model_is_strict(w, capsys):
    assert main(_ask(w, "--json")) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


def test_an_unexpected_error_is_one_line(monkeypatch, capsys):
    import steerchat.cli.models as models

    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(models, "run_models", boom)
    monkeypatch.delenv("STEERCHAT_DEBUG", raising=False)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steerchat: unexpected error")
    assert "RuntimeError: something broke" in err and "STEERCHAT_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("STEERCHAT_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["models"])


def test_an_os_error_is_one_line(monkeypatch, capsys):
    import steerchat.cli.models as models

    def fail(args):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(models, "run_models", fail)
    assert main(["models"]) == 1
    assert capsys.readouterr().err == "steerchat: /some/file: Permission denied\n"


def test_ask_dash_reads_the_prompt_from_stdin(w):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "steerchat", "ask", "-", "--model", w.model, "--sae", w.sae,
                           "--level", "Max", "--system", "be brief", "--max-tokens", "3", "--json"],
                          input="héllo from stdin\n".encode(), capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    trace = json.loads(proc.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert trace["prompt"] == "héllo from stdin\n" and trace["level"] == "Max"
    assert trace["timings"]["reply_tokens"] <= 3
