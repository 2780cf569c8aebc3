"""Export a saved chat to Markdown (the branch on screen, readable, with each turn's level and
top features) or to JSON (the whole tree: every message of every branch with its parent and
full trace)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from steerchat.engine.core.trace import FeatureStat, TurnTrace
from steerchat.tui.sanitize import escape_controls, one_line

from steerchat.store import ChatRow, MessageRow, Store


def _feature_name(stat: FeatureStat) -> str:
    return f"#{stat.feature} {stat.label}" if stat.label else f"#{stat.feature}"


def top_features(stats: list[FeatureStat], n: int = 5) -> list[FeatureStat]:
    """The `n` strongest features by peak activation."""
    return sorted(stats, key=lambda s: s.max, reverse=True)[:n]


def level_label(level: str | None, trace: TurnTrace | None) -> str:
    """The level a turn ran at, with any slider moves during the reply ("Low → High").

    The trace is the record when there is one; the stored label serves replies without one.
    """
    if trace is None:
        return level or "?"
    names = [trace.level]
    for _, name in trace.level_changes:
        if name != names[-1]:
            names.append(name)
    return " → ".join(names)


def _trace(row: MessageRow) -> TurnTrace | None:
    if not row.trace_json:
        return None
    try:
        return TurnTrace.from_json(row.trace_json)
    except (ValueError, TypeError, KeyError):
        return None  # a trace from an incompatible version: export the text anyway


def _line(text: str) -> str:
    """One line of our own structure (title, labels): no newline, no control, no Markdown markup."""
    flat = one_line(text, 10_000)
    return re.sub(r"([\\`\[\]<>])", r"\\\1", flat)  # no links, HTML or code spans


def fenced(text: str) -> str:
    """Message text as an inert fenced block that keeps every character.

    The fence is longer than any run of backticks in the text, so no line of it can close
    the block and forge a heading ("## Assistant ...") or any other structure; control
    characters (C0, C1, bidi) are written as visible ⟨U+XXXX⟩, nothing is replaced.
    """
    body = escape_controls(text.replace("\r\n", "\n"))
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{body}\n{fence}"


def chat_to_markdown(chat: ChatRow, messages: list[MessageRow]) -> str:
    """The chat as Markdown; each message's text is fenced (inert) with its controls made visible."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.created))
    lines = [f"# {_line(chat.title)}", "",
             f"Model: {_line(chat.model)} · SAE: {_line(chat.sae or 'none')} · {when}", ""]
    for row in messages:
        if row.role == "user":
            lines += ["## You", "", fenced(row.content), ""]
            continue
        trace = _trace(row)
        head = f"## Assistant (level: {_line(level_label(row.level, trace))}"
        if row.status != "ok":
            head += f", {row.status}"
        if row.flagged_bad:
            head += ", flagged bad"
        lines += [head + ")", "", fenced(row.content), ""]
        if trace:
            if trace.verdict is not None:
                lines.append(f"- Judge: {'refusal' if trace.verdict.refused else 'answer'} (score {trace.verdict.score:.2f})")
            for span, stats in (("prompt", trace.prompt_features), ("reply", trace.reply_features)):
                if stats:
                    tops = ", ".join(f"{_feature_name(s)} ({s.max:.1f})" for s in top_features(stats))
                    lines.append(f"- Top {span} features: {_line(tops)}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def chat_to_json(chat: ChatRow, messages: list[MessageRow], current_leaf: int | None = None) -> str:
    """The chat as JSON: every message (all branches; `parent_id` links them), each reply with its trace."""
    data = {
        "id": chat.id,
        "title": chat.title,
        "created": chat.created,
        "updated": chat.updated,
        "model": chat.model,
        "sae": chat.sae,
        "system": chat.system,
        "current_leaf": current_leaf,
        "messages": [
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "level": m.level,
                "status": m.status,
                "created": m.created,
                "flagged_bad": m.flagged_bad,
                "trace": json.loads(m.trace_json) if m.trace_json else None,
            }
            for m in messages
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False)


def export_chat(store: Store, chat_id: int, folder: Path, fmt: str) -> Path:
    """Write chat `chat_id` as `fmt` ("md" or "json") into `folder`; return the file."""
    chat = store.chat(chat_id)
    if chat is None:
        raise ValueError(f"no chat with id {chat_id}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", chat.title).strip("-").lower()[:40] or "chat"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"steerchat-{chat.id}-{slug}.{fmt}"
    if fmt == "md":
        text = chat_to_markdown(chat, store.branch(chat_id))
    else:
        text = chat_to_json(chat, store.messages(chat_id), store.current_leaf(chat_id))
    path.write_text(text, encoding="utf-8")
    return path
