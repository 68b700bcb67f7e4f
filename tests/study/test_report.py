"""prefopt/study/report.py: β labels never overlap (even for coinciding points), and the figures are drawn
from the study dict alone."""

from __future__ import annotations

import itertools

from prefopt.study import report


def _result(frontiers: list[list[tuple[float, float, float]]]) -> dict:
    """A study dict with just what plot_frontiers reads: per frontier, (β, KL, reward) points."""
    out = []
    for k, points in enumerate(frontiers):
        out.append({"frontier": f"loss{k}", "points": [
            {"beta": b, "kl": x, "kl_ci": [x - 0.1, x + 0.1], "reward": y, "reward_ci": [y - 0.05, y + 0.05]}
            for b, x, y in points]})
    return {"benchmark": "sentiment", "frontiers": out, "kl_grid": []}


def test_beta_labels_do_not_collide():
    """Three frontiers, two of them on exactly the same points and the third close by: 9 labels, and no
    two of their drawn boxes intersect."""
    same = [(0.01, 1.2, 0.65), (0.1, 1.0, 0.6), (1.0, 0.45, 0.48)]
    near = [(0.01, 1.22, 0.652), (0.1, 1.01, 0.598), (1.0, 0.46, 0.481)]
    fig = report.plot_frontiers(_result([same, same, near]))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 9 and {t.get_text() for t in ax.texts} == {"β=0.01", "β=0.1", "β=1"}
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    # One line per frontier, joined in β order (x follows the points as given).
    lines = [line for line in ax.lines if len(line.get_xdata()) == 3]
    assert [list(line.get_xdata()) for line in lines[:1]] == [[1.2, 1.0, 0.45]]
