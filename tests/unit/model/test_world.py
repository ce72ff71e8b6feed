"""The synthetic world: determinism, splits, captions and rendering."""

from __future__ import annotations

import numpy as np

from libs.model.maskgit import CaptionTokenizer
from libs.model.scenes import (
    BACKGROUNDS,
    COLOUR_NAMES,
    FORBIDDEN_SHAPE,
    INTERNAL_SIZE,
    SHAPES,
    SIZES,
    STYLES,
    render_scene,
)
from libs.modeltools.world import UNSEEN_PAIRS, World, caption_vocabulary


def test_world_covers_the_issue_minimums() -> None:
    assert len(SHAPES) >= 9 and FORBIDDEN_SHAPE in SHAPES  # 8 ordinary shapes + the skull
    assert len(COLOUR_NAMES) == 8
    assert len(SIZES) == 2
    assert {"sky", "grass", "night"} <= set(BACKGROUNDS)
    assert {"pastel", "pixel art", "watercolor"} <= set(STYLES)


def test_same_seed_same_samples() -> None:
    a, b = World(3, "train"), World(3, "train")
    for i in range(20):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.scene == sb.scene
        assert sa.caption == sb.caption
        assert np.array_equal(sa.image, sb.image)


def test_different_seeds_and_splits_differ() -> None:
    base = [World(0, "train").scene(i) for i in range(20)]
    assert base != [World(1, "train").scene(i) for i in range(20)]
    assert base != [World(0, "heldout").scene(i) for i in range(20)]


def test_train_split_never_contains_unseen_pairs() -> None:
    world = World(0, "train")
    for i in range(400):
        for obj in world.scene(i).objects:
            assert (obj.shape, obj.colour) not in UNSEEN_PAIRS


def test_unseen_split_leads_with_an_unseen_pair() -> None:
    world = World(0, "unseen")
    for i in range(50):
        obj = world.scene(i, num_objects=1).objects[0]
        assert (obj.shape, obj.colour) in UNSEEN_PAIRS


def test_captions_state_only_true_attributes_and_use_known_words() -> None:
    world = World(0, "train")
    tokenizer = CaptionTokenizer(caption_vocabulary(), max_len=64)
    for i in range(200):
        sample = world.sample(i, variant=i % 5)
        scene, caption = sample.scene, sample.caption
        assert len(caption.objects) == len(scene.objects)
        for claim, obj in zip(caption.objects, scene.objects, strict=True):
            assert (claim.shape, claim.colour) == (obj.shape, obj.colour)
            assert claim.size in (None, obj.size)
            assert claim.position in (None, obj.position)
            assert obj.colour in caption.text and obj.shape in caption.text
        assert caption.background in (None, scene.background)
        assert caption.style in (None, scene.style)
        assert CaptionTokenizer.UNK not in tokenizer.encode(caption.text)


def test_several_phrasings_per_scene() -> None:
    world = World(0, "train")
    scene = world.scene(5)
    texts = {world.caption(scene, 5, variant).text for variant in range(8)}
    assert len(texts) >= 4


def test_render_sizes_and_range() -> None:
    scene = World(0, "train").scene(0)
    small = render_scene(scene)
    assert small.shape == (INTERNAL_SIZE, INTERNAL_SIZE, 3) and small.dtype == np.uint8
    for size in (256, 512):
        assert render_scene(scene, size).shape == (size, size, 3)
    assert small.std() > 5  # not a blank image


def test_objects_change_the_image() -> None:
    world = World(0, "heldout")
    scene = world.scene(0, num_objects=1)
    empty = type(scene)((), scene.background, scene.style, scene.texture_seed)
    diff = np.abs(render_scene(scene).astype(int) - render_scene(empty).astype(int))
    assert diff.sum(axis=2).max() > 60
