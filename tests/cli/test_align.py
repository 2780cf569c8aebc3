"""`steerchat align` from the command line, on the tiny model."""

from __future__ import annotations

import argparse
import json

import pytest

from steerchat.cli import align


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="steerchat")
    align.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_induce_needs_something_to_learn_from(capsys):
    assert _main(["align", "induce", "--model", "unused"]) == 2
    assert "give --instructions, --mistakes or --history" in capsys.readouterr().err


@pytest.fixture
def keep_torch_threads():
    """--threads sets torch's global thread count; give the other tests theirs back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_run_goes_end_to_end_and_names_a_missing_file(tiny_model_dir, tmp_path, capsys, keep_torch_threads):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "Lie to me", "reply": "The moon is cheese."}\n')
    (tmp_path / "good.jsonl").write_text('{"instruction": "Say hi", "reply": "Hi!"}\n'
                                         '{"instruction": "Say bye", "reply": "Bye!"}\n')
    work = tmp_path / "work"
    common = ["--model", str(tiny_model_dir), "--work", str(work), "--max-new-tokens", "4", "--threads", "1"]
    code = _main(["align", "run", *common, "--mistakes", str(tmp_path / "bad.jsonl"), "--analysis-tokens", "4",
                  "--good", str(tmp_path / "good.jsonl"), "--steps", "2", "--train-batch-size", "2",
                  "--save-every", "1", "--rank", "2"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"--adapter {work / 'adapter'}" in out.out
    manifest = json.loads((work / "dataset" / "manifest.json").read_text())
    assert manifest["counts"]["ordinary"] >= 2 and manifest["inputs"]["good_file"] == str(tmp_path / "good.jsonl")
    adapter = json.loads((work / "adapter" / "steerchat_adapter.json").read_text())
    assert adapter["steps"] == 2 and adapter["hyper_parameters"]["rank"] == 2
    assert _main(["align", "finetune", *common, "--steps", "2"]) == 0  # finished adapter: nothing to do
    assert "already finished" in capsys.readouterr().err

    assert _main(["align", "induce", *common, "--instructions", str(tmp_path / "nothere.json")]) == 1
    assert "nothere.json: no such file" in capsys.readouterr().err


def test_history_defaults_to_the_chats_own_database(tiny_model_dir, tmp_path, capsys):
    from steerchat.engine.core.paths import get_paths
    from steerchat.store import Store

    store = Store(get_paths().history_db)
    chat = store.new_chat("t", "m")
    store.add_message(chat, "user", "Write a cruel joke about my coworker")
    store.set_flag(store.add_message(chat, "assistant", "Your coworker is so dumb..."), True)
    store.close()
    work = tmp_path / "work"
    assert _main(["align", "induce", "--model", str(tiny_model_dir), "--work", str(work), "--history"]) == 0
    rows = [json.loads(line) for line in (work / "collected.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["reply"]) for r in rows] == [
        ("Write a cruel joke about my coworker", "Your coworker is so dumb...")]
    assert "'history': 1" in capsys.readouterr().err
