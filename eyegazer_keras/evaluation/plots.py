"""Evaluation figures: confusion matrix, ROC, reliability diagram, explanation maps, curves.

Figures are drawn with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg``: no
``pyplot``, so importing or calling this module never changes the user's matplotlib backend and
works headless. Every PNG is written atomically (``files.write_atomic``: a temporary file in the
same folder, then ``os.replace``), so a crash never leaves half a file behind. ``report`` writes
a split's metrics JSON with these figures.

Example:

```python
import numpy as np
from eyegazer_keras.evaluation import plots

cm = np.array([[8, 2], [1, 9]])  # rows = true class, columns = predicted
plots.plot_confusion_matrix(cm, ["no_dr", "dr"], "confusion.png", title="binary - validation")
plots.plot_reliability([0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), "rel.png")
```
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from eyegazer_keras import GRADE_NAMES, files
from eyegazer_keras.evaluation import metrics, regression
from eyegazer_keras.evaluation.metric_inputs import as_labels, as_probs, as_scores

__all__ = [
    "plot_confusion_matrix",
    "plot_explanations",
    "plot_predictions_vs_true",
    "plot_reliability",
    "plot_roc",
    "plot_training_curves",
]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return files.write_atomic(path, lambda f: fig.savefig(f, format=fmt), mode="wb")


def plot_confusion_matrix(
    cm, class_names: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draws a confusion matrix: counts in each cell, colour = fraction of the true row.

    Args:
        cm: int array [k, k]. rows = true class, columns = predicted class.
        class_names: k names, index = class id.
        path: str or PathLike. PNG to write.
        title: str or None. figure title. Defaults to ``"Confusion matrix"``.

    Returns:
        The path written.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(
            f"cm has shape {cm.shape} but there are {k} class_names; pass a [k, k] matrix."
        )
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig = _new_figure(1.2 * k + 2.5, 1.1 * k + 1.8)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            color = "white" if frac[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{frac[i, j]:.0%}",
                ha="center",
                va="center",
                color=color,
                fontsize=9,
            )
    ax.set_xticks(range(k), labels=list(class_names), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    n = int(cm.sum())
    acc = float(np.trace(cm) / n) if n else float("nan")
    ax.set_title(f"{title or 'Confusion matrix'}\n(n={n}, accuracy={acc:.3f})", fontsize=10)
    return _save_figure(fig, path)


def _roc_line(ax, y_binary: np.ndarray, score: np.ndarray, label: str, **kwargs) -> bool:
    if np.unique(y_binary).size < 2:
        return False
    fpr, tpr, _ = roc_curve(y_binary, score)
    auc = roc_auc_score(y_binary, score)
    ax.plot(fpr, tpr, label=f"{label} (AUC={auc:.3f})", **kwargs)
    return True


def plot_roc(y_true, probs, task: str, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draws ROC curves: DR vs no DR (binary), or one-vs-rest per grade plus referable DR.

    Classes absent from ``y_true`` (or present in every row) have no curve; if no curve can be
    drawn the figure says so instead of failing.

    Args:
        y_true: int array [n] of class ids.
        probs: float array [n, 5] (grade) or [n, 2] (binary).
        task: str. ``"grade"`` or ``"binary"``.
        path: str or PathLike. PNG to write.
        title: str or None. figure title. Defaults to ``"ROC"``.

    Returns:
        The path written.
    """
    names = metrics.class_names(task)
    y = as_labels(y_true, len(names))
    p = as_probs(probs, len(names), y.size)
    fig = _new_figure(6.0, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    drawn = 0
    if task == "binary":
        drawn += _roc_line(ax, y == 1, p[:, 1], "DR vs no DR", linewidth=2)
    else:
        for i, name in enumerate(names):
            drawn += _roc_line(ax, y == i, p[:, i], f"{i} {name} vs rest", linewidth=1.2)
        ref = metrics.REFERABLE_MIN_GRADE
        drawn += _roc_line(
            ax,
            y >= ref,
            p[:, ref:].sum(axis=1),
            f"referable (grade>={ref})",
            linewidth=2.5,
            color="black",
        )
    if not drawn:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class in y_true", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"{title or 'ROC'} (n={y.size})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def plot_reliability(
    y_true,
    probs: Mapping[str, object] | object,
    path: str | os.PathLike,
    n_bins: int = metrics.ECE_BINS,
    title: str | None = None,
) -> Path:
    """Draws a reliability diagram: top-label accuracy vs confidence per bin, and bin counts.

    A calibrated model's points lie on the diagonal; points below it are over-confident. The
    lower panel shows how many rows fall in each bin (log scale). Bins follow
    ``metrics.reliability_bins`` (Guo et al. 2017).

    Args:
        y_true: int array [n] of class ids.
        probs: float array [n, k], or a dict of label to [n, k] arrays (e.g. ``{"uncalibrated":
            p, "temperature-scaled": q}``) drawn on the same axes.
        path: str or PathLike. PNG to write.
        n_bins: int. equal-width confidence bins. Defaults to 15.
        title: str or None. figure title. Defaults to ``"Reliability"``.

    Returns:
        The path written.

    Raises:
        ValueError: bad ``y_true``/``probs`` (naming the first bad row).
    """
    series = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig = _new_figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    width = 1.0 / n_bins
    for i, (label, p) in enumerate(series.items()):
        table = metrics.reliability_bins(y_true, p, n_bins)
        ece = metrics.expected_calibration_error(y_true, p, n_bins)
        centres = np.array(table["edges"][:-1]) + width / 2
        conf = np.array([np.nan if v is None else v for v in table["confidence"]])
        acc = np.array([np.nan if v is None else v for v in table["accuracy"]])
        (line,) = top.plot(conf, acc, marker="o", linewidth=1.5, label=f"{label} (ECE={ece:.3f})")
        shift = (i - (len(series) - 1) / 2) * width / max(1, len(series))
        bottom.bar(
            centres + shift,
            table["count"],
            width=width / max(1, len(series)),
            color=line.get_color(),
            alpha=0.7,
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.01)
    top.set_ylabel("accuracy of the top class")
    n = int(np.asarray(y_true).shape[0])
    top.set_title(f"{title or 'Reliability'} (n={n}, {n_bins} bins)", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_yscale("symlog")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("rows")
    return _save_figure(fig, path)


def plot_explanations(examples: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draws one row per photo: the photo, its lesion mask, and each method's map over it.

    Args:
        examples: dict from `explain_scores.explanations_report`: ``images`` uint8 [n, S, S, 3],
            ``grades`` [n], ``masks`` bool [n, S, S] (optional) and ``maps`` (method -> float
            [n, S, S] in [0, 1]).
        path: str or PathLike. PNG to write.
        title: str or None. figure title. Defaults to ``"Explanation maps"``.

    Returns:
        The path written.
    """
    from eyegazer_keras.evaluation import explain

    images = np.asarray(examples["images"])
    maps = dict(examples["maps"])
    masks = examples.get("masks")
    n = images.shape[0]
    cols = 1 + (masks is not None) + len(maps)
    fig = _new_figure(2.0 * cols, 2.1 * n + 0.4)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        panels = [("photo (model input)", images[i])]
        if masks is not None:
            panels.append(("lesion mask", np.asarray(masks[i], np.float32)))
        panels += [(name, explain.overlay(images[i], m[i])) for name, m in maps.items()]
        for j, (name, panel) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(
                panel,
                cmap="gray" if panel.ndim == 2 else None,
                vmin=0,
                vmax=1 if panel.ndim == 2 else None,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
        grade = int(examples["grades"][i])
        axes[i, 0].set_ylabel(f"grade {grade} {GRADE_NAMES[grade]}", fontsize=8)
    fig.suptitle(title or "Explanation maps", fontsize=10)
    return _save_figure(fig, path)


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draws one panel per metric family (``loss``, ``accuracy``, ...): train vs ``val_``.

    Args:
        history: dict of metric name to per-epoch values, e.g. ``keras.callbacks.History.history``
            (a ``History`` object is accepted too). ``val_<name>`` joins the ``<name>`` panel;
            ``None``/NaN values leave gaps.
        path: str or PathLike. PNG to write.
        title: str or None. The figure's title, e.g. which stage of a run it shows. Defaults to
            None (``"Training curves (N epochs)"``).

    Returns:
        The path written.
    """
    history = getattr(history, "history", history)
    series = {str(k): v for k, v in dict(history).items() if v is not None and len(v) > 0}
    if not series:
        raise ValueError(
            "history is empty; pass History.history from a fit with at least one epoch."
        )
    families: list[str] = []
    for key in series:
        family = key.removeprefix("val_")
        if family not in families:
            families.append(family)
    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig = _new_figure(4.2 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, family in zip(axes, families, strict=False):
        for key, label, style in ((family, "train", "-"), (f"val_{family}", "validation", "--")):
            if key not in series:
                continue
            values = np.array(
                [np.nan if v is None else float(v) for v in series[key]], dtype=np.float64
            )
            epochs = np.arange(1, values.size + 1)
            ax.plot(epochs, values, style, marker="o", markersize=3, label=label)
        ax.set_title(family, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    epochs = max(len(v) for v in series.values())
    fig.suptitle(title or f"Training curves ({epochs} epochs)", fontsize=10)
    return _save_figure(fig, path)


def plot_predictions_vs_true(
    y_true, y_pred, path: str | os.PathLike, cutoffs: Sequence[float] | None = None
) -> Path:
    """Draws regression outputs per true grade (violin + jittered points) with the cut-offs.

    Args:
        y_true: int array [n]. true grades 0..4.
        y_pred: float array [n] or [n, 1]. regression outputs.
        path: str or PathLike. PNG to write.
        cutoffs: 4 floats or None. drawn as horizontal lines. Defaults to ``None`` (rounding).

    Returns:
        The path written.
    """
    y = as_labels(y_true, len(GRADE_NAMES))
    s = as_scores(y_pred, y.size)
    cut = regression.check_cutoffs(regression.DEFAULT_CUTOFFS if cutoffs is None else cutoffs)
    fig = _new_figure(7.0, 5.0)
    ax = fig.add_subplot()
    present = [g for g in range(len(GRADE_NAMES)) if np.any(y == g)]
    violin = [g for g in present if np.unique(s[y == g]).size > 1]
    if violin:
        ax.violinplot([s[y == g] for g in violin], positions=violin, widths=0.8, showmedians=True)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, y.size)
    ax.scatter(y + jitter, s, s=6, alpha=0.4, color="black")
    for c in cut:
        ax.axhline(c, color="red", linestyle="--", linewidth=0.8)
    grades = range(len(GRADE_NAMES))
    ax.plot([0, 4], [0, 4], color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(
        list(grades), labels=[f"{g}\n{n}" for g, n in zip(grades, GRADE_NAMES, strict=True)]
    )
    ax.set_xlabel("true grade")
    ax.set_ylabel("predicted grade (continuous)")
    ax.set_title(
        f"Predicted vs true grade (n={y.size}); red = cut-offs {', '.join(f'{c:.2f}' for c in cut)}",
        fontsize=9,
    )
    return _save_figure(fig, path)
