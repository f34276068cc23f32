"""A bar chart of foveal's speedup over each baseline, per workload (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .table import baselines, title


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Fail early (before a long benchmark) when a plot was asked for but cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install matplotlib "
                              "(or foveal[bench])") from None


def plot_speedups(document: dict[str, Any], path: str | Path) -> Path:
    """Horizontal bars: baseline time / foveal time per case; the line at 1 is parity."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["results"]
    names = baselines(document)
    labels = [f"{r['workload']} {r['dtype']} {r['direction']}" for r in rows]
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.3 * len(rows) * max(1, len(names))))
    for i, name in enumerate(names):
        values = [r["speedup"].get(name) or 0.0 for r in rows]
        positions = [j + i * height for j in range(len(rows))]
        ax.barh(positions, values, height=height, label=f"vs {name}")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([j + height * (len(names) - 1) / 2 for j in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup (baseline time / foveal time); missing bar: not timed")
    ax.set_title(title(document), fontsize=8)
    if names:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
