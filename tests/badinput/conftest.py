"""At the end of a run, reports how many bad-input cases ran in each file of this folder,
and how they went (test_cli.py's line reads "bad-input CLI cases: N (...)")."""

from __future__ import annotations

TITLES = {"test_cli.py": "bad-input CLI cases"}


def pytest_terminal_summary(terminalreporter):
    outcome: dict[str, str] = {}
    for key, reports in terminalreporter.stats.items():
        for r in reports:
            nodeid = getattr(r, "nodeid", "")
            if "badinput/" not in nodeid or getattr(r, "when", None) not in ("setup", "call"):
                continue
            if r.when == "setup" and r.outcome == "passed":
                continue  # the call's report says how it went
            outcome[nodeid] = key
    by_file: dict[str, dict[str, int]] = {}
    for nodeid, key in outcome.items():
        counts = by_file.setdefault(nodeid.split("::")[0].rsplit("/", 1)[-1], {})
        counts[key] = counts.get(key, 0) + 1
    for name, counts in sorted(by_file.items()):
        title = TITLES.get(name, f"bad-input cases in {name}")
        terminalreporter.write_line(f"{title}: {sum(counts.values())} ("
                                    + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")")
