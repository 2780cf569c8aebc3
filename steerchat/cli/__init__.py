"""Subcommands of `steerchat`. Each module has `register(subparsers)` (argparse only, no torch)
and a `run(args) -> int` that imports the engine lazily, so `--help` stays instant."""
