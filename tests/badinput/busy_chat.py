"""`python -m tests.badinput.busy_chat`: the real `run_chat` (its terminal driver and its exit
path) on the fake engine, whose replies never come: `send` blocks in a thread for ten
minutes, as tokenising a 1 MB prompt did. test_hostile_text.py drives it in tmux to paste
hostile bytes and to check that Ctrl+Q still ends the process."""

from __future__ import annotations

import sys
import time

from steerchat.tui.app import run_chat
from tests.tui.fake_engine import FakeEngine


class _Stuck:
    """A fake session whose `send` looks at neither `cancel` nor anything else for 600 s."""

    def __init__(self, session) -> None:
        self.__dict__["_inner"] = session

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def send(self, text, on_token=None, cancel=None):
        time.sleep(600)
        return self._inner.send(text, on_token, cancel)


def main() -> int:
    engine = FakeEngine()
    real = engine.open_session
    engine.open_session = lambda *a, **k: _Stuck(real(*a, **k))
    return run_chat(session_factory=engine.open_session)


if __name__ == "__main__":
    sys.exit(main())
