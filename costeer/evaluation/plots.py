"""One figure shape, used by the eval sweep and the app's parameter explorer: a score against a
parameter, with the effective steering strength C on a second axis."""
from __future__ import annotations


def score_and_strength(values, scores, strengths, xlabel: str, ylabel: str, label: str, yerr=None):
    """Return a matplotlib Figure; C goes on a log axis when it spans more than 50x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 3.4))
    if yerr is None:
        ax.plot(values, scores, "o-", color="#2a9d8f", label=label)
    else:
        ax.errorbar(values, scores, yerr=yerr, fmt="o-", capsize=4, color="#2a9d8f", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax2 = ax.twinx()
    ax2.plot(values, strengths, "s--", color="#e76f51", label="C")
    ax2.set_ylabel("effective strength C")
    if max(strengths) / max(min(strengths), 1e-9) > 50:
        ax2.set_yscale("log")
    fig.legend(loc="upper right")
    fig.tight_layout()
    return fig
