"""Learning-curve plots from `metrics.jsonl` records (matplotlib, headless)."""

from __future__ import annotations

from typing import Mapping, Sequence


def eval_curve(records: Sequence[Mapping[str, float]], x_key: str = "samples/generated_total",
               y_key: str = "eval/accuracy") -> tuple[list[float], list[float]]:
    """(x, y) of every record with an evaluation; x is 0 before the first RL step."""
    xs, ys = [], []
    for record in records:
        if y_key in record:
            xs.append(float(record.get(x_key, 0.0)))
            ys.append(float(record[y_key]))
    return xs, ys


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str,
    *,
    xlabel: str = "training samples generated",
    ylabel: str = "held-out accuracy",
    title: str = "",
) -> None:
    """One line per label, written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # No display: CI, servers, colab's file output.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
