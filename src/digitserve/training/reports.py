"""The plots that go next to a version's metrics: confusion matrix, error gallery, curves."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(confusion: Sequence[Sequence[int]], title: str) -> bytes:
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    off_diagonal = cm - np.diag(np.diag(cm))
    # Colour the errors, not the diagonal: on MNIST the diagonal would wash everything out.
    im = ax.imshow(off_diagonal, cmap="Reds")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(
                    j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="tab:blue" if i == j else "black"
                )
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, label="errors")
    return _png(fig)


def gallery_png(images: Sequence[np.ndarray], captions: Sequence[str], title: str, cols: int = 10) -> bytes:
    """Digits in a grid, each with its caption, under one title.

    One image of the whole grid and a text per caption: an axes per digit made a 100-digit
    gallery take 2.4 s to draw, most of a smoke training run's reports."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    side, caption_h, pad = 28, 12, 3  # pixels of a cell: the caption's band above the digit
    cell_w, cell_h = side + 2 * pad, side + caption_h + pad
    mosaic = np.zeros((rows * cell_h, cols * cell_w), np.float32)
    for k, image in enumerate(images):
        top, left = (k // cols) * cell_h + caption_h, (k % cols) * cell_w + pad
        pixels = np.asarray(image, np.float32)[:side, :side]
        low, high = float(pixels.min()), float(pixels.max())  # each digit on its own scale, as imshow draws one
        mosaic[top : top + side, left : left + side] = (pixels - low) * (255 / (high - low)) if high > low else 0
    width = cols * 1.15
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.3))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    for k, caption in enumerate(captions[: len(images)]):
        x, y = (k % cols) * cell_w + cell_w / 2, (k // cols) * cell_h + caption_h - 2
        ax.text(x, y, caption, fontsize=7, ha="center", va="bottom")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def misclassified_png(
    images: np.ndarray, labels: np.ndarray, preds: np.ndarray, confidences: np.ndarray, title: str, limit: int = 100
) -> bytes:
    """A gallery of misclassified digits, each titled 'true→predicted (confidence)'."""
    wrong = np.flatnonzero(labels != preds)[:limit]
    captions = [f"{labels[i]}→{preds[i]} ({confidences[i]:.2f})" for i in wrong]
    errors = int((labels != preds).sum())
    return gallery_png([images[i] for i in wrong], captions, f"{title}: {errors} errors (true→predicted)")


def curves_png(history: Sequence[Mapping[str, float]], title: str) -> bytes:
    """Loss and accuracy per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _png(fig)


def reliability_png(
    raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, temperature: float, title: str, bins: int = 15
) -> bytes:
    """Reliability diagram: accuracy against confidence in 15 bins, before and after calibration,
    with the share of test digits in each bin below."""
    from digitserve.evaluation import expected_calibration_error, reliability

    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for probs, name, style in ((raw, "before (T=1)", "s-"), (calibrated, f"after (T={temperature:g})", "o-")):
        table = [b for b in reliability(probs, labels, bins) if b["count"]]
        ece = expected_calibration_error(probs, labels, bins)
        ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], style, label=f"{name}: ECE {ece:.2%}")
    ax.set(
        ylabel="accuracy", title=f"{title}\nreliability on the MNIST test set ({bins} bins)", xlim=(0, 1), ylim=(0, 1)
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    counts = [b["count"] for b in reliability(calibrated, labels, bins)]
    ax_count.bar([(b + 0.5) / bins for b in range(bins)], counts, width=0.9 / bins, color="tab:orange")
    ax_count.set(xlabel="confidence (largest calibrated probability)", ylabel="digits", yscale="log")
    return _png(fig)


def not_a_digit_png(
    digits: np.ndarray,
    digit_probs: np.ndarray,
    negatives: np.ndarray,
    negative_probs: np.ndarray,
    calibration: Any,
    title: str,
    limit: int = 40,
) -> bytes:
    """The threshold's mistakes: MNIST test digits answered "not a digit", and held-out negatives
    answered as digits, each with its best guess and confidence."""
    threshold = calibration.threshold
    rejected = np.flatnonzero(digit_probs.max(1) < threshold)[: limit // 2]
    accepted = np.flatnonzero(negative_probs.max(1) >= threshold)[: limit - len(rejected)]
    images = [digits[i] for i in rejected] + [negatives[i] for i in accepted]
    captions = [f"digit: {digit_probs[i].argmax()} {digit_probs[i].max():.2f}" for i in rejected]
    captions += [f"neg→{negative_probs[i].argmax()} {negative_probs[i].max():.2f}" for i in accepted]
    summary = (
        f"{title}: threshold {threshold:g}; {int((digit_probs.max(1) < threshold).sum())} test digits answered "
        f"'not a digit', {int((negative_probs.max(1) >= threshold).sum())} of {len(negatives)} held-out negatives "
        "answered as digits"
    )
    if not images:
        fig, ax = plt.subplots(figsize=(8, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, summary + "\n(no mistakes to show)", ha="center", va="center", fontsize=8)
        return _png(fig)
    return gallery_png(images, captions, summary)
