"""The project's own image sets: negatives and the robustness set are deterministic, split apart,
and look like what the server's preprocessing makes of a picture."""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from digitserve.data import load_mnist
from digitserve.synthetic import sets
from digitserve.synthetic.negatives import GLYPHS, HELD_OUT_FONTS, KINDS, fonts_for, make_negatives
from digitserve.synthetic.robustness import VARIANTS, make_robustness_set
from digitserve.training.augment import Augmentation


def test_negatives_are_deterministic_and_splits_differ() -> None:
    a, b = make_negatives("train", 60), make_negatives("train", 60)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.kinds, b.kinds)
    assert np.array_equal(make_negatives("train", 20).images, a.images[:20])  # image i does not depend on count
    held_out = make_negatives("held-out", 60)
    assert not any(np.array_equal(x, y) for x in held_out.images for y in a.images)


def test_negatives_cover_every_kind_and_both_renderings() -> None:
    s = make_negatives("validation", 300)
    assert set(s.kinds.tolist()) == set(range(len(KINDS)))
    assert 0.35 < s.photo.mean() < 0.65
    assert s.images.dtype == np.uint8 and s.images.shape == (300, 28, 28)
    ink = (s.images > 64).sum(axis=(1, 2))
    assert ink.min() >= 10  # every one has ink the model can see
    assert np.abs(s.images.reshape(300, -1).mean(1) - s.images.mean()).max() < 255  # not all identical
    assert len({img.tobytes() for img in s.images}) == 300


def test_held_out_fonts_are_only_in_the_held_out_split() -> None:
    assert not set(HELD_OUT_FONTS) & set(fonts_for("train"))
    assert not set(HELD_OUT_FONTS) & set(fonts_for("validation"))
    assert set(HELD_OUT_FONTS) <= set(fonts_for("held-out"))
    for font in fonts_for("held-out"):
        from digitserve.synthetic.negatives import font_dir

        assert (font_dir() / font).exists(), font


def test_no_digit_like_glyph_is_a_negative() -> None:
    assert not set("0123456789OoIilSsZzBbGgqy|!$") & set(GLYPHS)


def test_robustness_set_is_deterministic_and_keeps_labels() -> None:
    test = load_mnist("test")
    a = make_robustness_set(test.images, test.labels, count=30)
    b = make_robustness_set(test.images, test.labels, count=30)
    assert list(a.images) == list(VARIANTS)
    assert np.array_equal(a.labels, test.labels[a.indices])
    for name in VARIANTS:
        assert np.array_equal(a.images[name], b.images[name]), name
        assert a.images[name].shape == (30, 28, 28)
        assert not np.array_equal(a.images[name], test.images[a.indices]), name  # the variant changed them


def test_sets_are_cached_under_the_code_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "mnist"
    monkeypatch.setenv("DIGITSERVE_DATA_DIR", str(data))
    first = sets.negatives("validation", 40)
    stored = list((tmp_path / "synthetic").glob("*.npz"))
    assert [p.name for p in stored] == [f"negatives-validation-40-{sets.code_hash()}.npz"]
    mtime = stored[0].stat().st_mtime_ns
    again = sets.negatives("validation", 40)
    assert stored[0].stat().st_mtime_ns == mtime  # read back, not remade
    assert np.array_equal(first.images, again.images) and np.array_equal(first.kinds, again.kinds)


def test_augmentation_is_seeded_and_keeps_digits_in_range() -> None:
    images = torch.from_numpy(load_mnist("test").images[:64]).unsqueeze(1).float() / 255
    a = Augmentation()(images, torch.Generator().manual_seed(3))
    b = Augmentation()(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, images)
    assert (a.amax(dim=(1, 2, 3)) > 0.8).all()  # every digit keeps full-strength ink
    moved = (a - images).abs().mean(dim=(1, 2, 3))
    assert (moved > 0.01).float().mean() > 0.9  # almost every digit changed


def _make_counted(marker: str) -> dict[str, np.ndarray]:
    with open(marker, "a") as f:
        f.write("made\n")
    time.sleep(0.5)  # long enough for the other process to ask meanwhile
    return {"images": np.arange(6, dtype=np.uint8)}


def _ask(data_dir: str, marker: str) -> list[int]:
    os.environ["DIGITSERVE_DATA_DIR"] = data_dir
    return sets._cached("counted", functools.partial(_make_counted, marker))["images"].tolist()


def test_a_set_two_processes_ask_for_at_once_is_made_once(tmp_path: Path) -> None:
    marker = tmp_path / "made.txt"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        answers = list(pool.map(_ask, [str(tmp_path / "mnist")] * 2, [str(marker)] * 2))
    assert answers == [[0, 1, 2, 3, 4, 5]] * 2
    assert marker.read_text() == "made\n", "the second process waited and read the first one's set"
