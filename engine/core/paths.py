"""Where steerchat keeps things, from platformdirs: config, data (chat history) and cache.

`STEERCHAT_HOME` puts all three under one folder (tests and portable installs use it).
Model weights stay in the Hugging Face cache, which `HF_HOME` controls as usual.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

APP = "steerchat"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def history_db(self) -> Path:
        return self.data_dir / "history.sqlite"

    @property
    def models_cache(self) -> Path:
        return self.cache_dir / "models"

    def hf_cache(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)


def get_paths() -> Paths:
    home = os.environ.get("STEERCHAT_HOME")
    if home:
        root = Path(home)
        return Paths(root / "config", root / "data", root / "cache")
    import platformdirs

    return Paths(
        Path(platformdirs.user_config_dir(APP)),
        Path(platformdirs.user_data_dir(APP)),
        Path(platformdirs.user_cache_dir(APP)),
    )


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks (model weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# headroom left free after a cache write: a disk filled to the last byte breaks everything else
FREE_SPACE_MARGIN = 256 << 20


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise a clear error before writing `needed` bytes under `folder` if the disk lacks room.

    Checked up front so a conversion does not fail after minutes with a torn file and a full
    disk; the folder (or its nearest existing parent) names the filesystem."""
    import shutil

    from .api import EngineError

    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # unknown: let the write itself report
    if free < needed + FREE_SPACE_MARGIN:
        mb = 1 << 20
        raise EngineError(
            f"Not enough disk space for {what}: it needs about {(needed + FREE_SPACE_MARGIN) // mb} MB in "
            f"{folder}, and {free // mb} MB are free. Free some space, or set STEERCHAT_HOME to a folder "
            f"on a disk with room, and start again.")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error from a writer (OSError, safetensors' own error) means the disk is full."""
    import errno

    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)
