"""The sweep's picture: refusal (unsafe, safe) and capability against steering strength.

matplotlib is an optional extra (`pip install steerchat[plot]`) and is imported only
here, only when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path

SERIES = (
    ("unsafe_refusal", "unsafe refused", "tab:red"),
    ("safe_refusal", "safe refused", "tab:orange"),
    ("capability", "capability (MC + maths)", "tab:blue"),
    ("escalation_compliance", "escalations complied", "tab:purple"),
)


def plot_sweep(rows: list[dict], path: Path, title: str = "") -> Path:
    """Write a PNG: one line per metric, solid for unconditional and dashed for conditional
    steering, each starting from the baseline at strength 0."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'steerchat[plot]'") from exc
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    base = [r for r in rows if r["strength"] == 0 and r["guidance"] == "none"][:1]
    for conditional, style in ((False, "-"), (True, "--")):
        pts = sorted([r for r in rows if r["strength"] > 0 and r["conditional"] == conditional and r.get("open_strength") is None
                      and r["guidance"] == "none" and r["features"] is None], key=lambda r: r["strength"])
        if not pts:
            continue
        pts = base + pts
        for key, label, color in SERIES:
            xs = [r["strength"] for r in pts if r.get(key) is not None]
            ys = [100 * r[key] for r in pts if r.get(key) is not None]
            if xs:
                ax.plot(xs, ys, style, marker="o" if not conditional else "s", color=color,
                        label=label if not conditional or not any(r["strength"] > 0 and not r["conditional"] for r in rows)
                        else None)
    ax.set_xlabel("clamp strength s (× reference activation)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Refusal and capability against steering strength")
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", ls="-", label="unconditional"),
                Line2D([], [], color="grey", ls="--", label="conditional (harm gate)")]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
