"""The procedural scenes of the vision chapters (training/scenes.py): deterministic, balanced, and
every mask is what the picture shows, occluders included."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.scenes import SHAPES, SceneConfig, load_scenes, make_scenes, shape_masks

NOISELESS = SceneConfig(noise=(0.0, 0.0))


def test_scenes_are_deterministic_for_a_seed():
    a, b, c = make_scenes(64, seed=5), make_scenes(64, seed=5), make_scenes(64, seed=6)
    for field in ("x", "y", "masks", "full_masks", "colours"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (64, 3, 32, 32) and a.x.dtype == np.float32 and 0.0 <= a.x.min() and a.x.max() <= 1.0


def test_classes_are_balanced():
    y = make_scenes(2000, seed=1).y
    counts = np.bincount(y, minlength=len(SHAPES))
    assert len(counts) == len(SHAPES) == 8
    assert counts.min() > 0.8 * len(y) / len(SHAPES) and counts.max() < 1.2 * len(y) / len(SHAPES)


def test_masks_are_exactly_the_pixels_of_the_target_colour():
    """Without noise the target is painted in one flat colour: the visible mask is exactly where
    the image has that colour, so an occluded pixel shows its occluder's colour, not the target's."""
    s = make_scenes(300, seed=2, cfg=NOISELESS)
    painted = np.all(s.x == s.colours[:, :, None, None], axis=1)  # (N, H, W)
    np.testing.assert_array_equal(painted, s.masks)
    assert (s.masks <= s.full_masks).all()
    occluded = (s.full_masks & ~s.masks).any(axis=(1, 2))
    assert 0.1 < occluded.mean() < 0.6, "clutter occludes some targets, not all"
    visible = s.masks.sum(axis=(1, 2)) / s.full_masks.sum(axis=(1, 2))
    assert visible.min() >= NOISELESS.min_visible


def test_noise_keeps_masks_and_labels():
    """Sensor noise changes the pixels, never what is where."""
    clean, noisy = make_scenes(50, seed=3, cfg=NOISELESS), make_scenes(50, seed=3)
    np.testing.assert_array_equal(clean.masks, noisy.masks)
    np.testing.assert_array_equal(clean.y, noisy.y)
    assert 0.01 < np.abs(noisy.x - clean.x).mean() < 0.1


def test_the_target_stands_out_from_its_background():
    s = make_scenes(200, seed=4, cfg=NOISELESS)
    for i in range(len(s.y)):
        background = s.x[i][:, ~s.full_masks[i]].mean(axis=1)
        assert np.linalg.norm(s.colours[i] - background) >= NOISELESS.min_contrast - 0.15  # clutter shifts the mean


def test_shapes_are_distinct_and_rotate():
    n = len(SHAPES)
    kind = np.arange(n)
    centre, radius = np.full(n, 15.5, np.float32), np.full(n, 12.0, np.float32)
    upright = shape_masks(kind, centre, centre, radius, np.zeros(n, np.float32))
    assert all(upright[k].sum() > 60 for k in range(n))
    for a in range(n):  # no two classes draw the same pixels
        for b in range(a + 1, n):
            assert (upright[a] ^ upright[b]).sum() > 30, (SHAPES[a], SHAPES[b])
    turned = shape_masks(kind, centre, centre, radius, np.full(n, np.pi / 5, np.float32))
    changed = [(upright[k] ^ turned[k]).sum() > 20 for k in range(n)]
    assert changed == [name not in ("circle", "ring") for name in SHAPES]  # only those are round


def test_config_switches_clutter_off():
    s = make_scenes(100, seed=7, cfg=replace(NOISELESS, max_clutter=0))
    np.testing.assert_array_equal(s.masks, s.full_masks)


def test_scene_datasets_share_images_and_label_the_visible_target():
    """`--dataset scenes` and `scene_masks` (training/data.py's load_dataset calls load_scenes)."""
    a, b = load_scenes(seed=3), load_scenes(seed=3)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert a.labels == SHAPES and a.num_classes == 8 and len(a.train) + len(a.val) + len(a.test) == 4000
    m = load_scenes(seed=3, masks=True)
    np.testing.assert_array_equal(m.test.x, a.test.x)
    assert m.labels == ("background", *SHAPES) and m.test.y.shape == (len(a.test), 32, 32)
    for dense, label in zip(m.test.y, a.test.y, strict=True):  # one class per image, on a visible part
        assert set(np.unique(dense)) == {0, label + 1}
