"""steerchat: a local terminal chat whose refusal is steered through sparse-autoencoder features.

One import namespace. The repository's top-level folders are mapped under it (see setup.py):

    steerchat.engine   engine/   torch side: data types ← runtime ← pipelines
    steerchat.tui      tui/      the Textual app (no torch at module level)
    steerchat.models   models/   the model registry and each model's shipped artifacts
    steerchat.cli      steerchat/cli/    the command line
    steerchat.store    steerchat/store/  the chat history database
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("steerchat")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
