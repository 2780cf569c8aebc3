"""The steerchat terminal app: a Textual chat UI over `engine.api.ChatSession`.

Nothing here imports torch at module level; the engine is imported inside the worker
that opens the model, so `steerchat --help` and `import tui.app` stay instant.
"""
