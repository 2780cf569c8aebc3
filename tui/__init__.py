"""The steerchat terminal app: a Textual chat UI over `engine.core.api.ChatSession`.

Nothing here imports torch at module level; the engine is imported inside the worker
that opens the model, so `steerchat --help` and `import steerchat.tui.app` stay instant.
"""
