"""Training pieces that decide what the generator learns: which cells objects cover (the
weighted loss), continuing from saved weights, a generator-only retrain and old plans."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.model.builtin import MaskGITImageModel
from libs.model.maskgit import MaskGITConfig
from libs.model.safety_classifier import load_safety_classifier
from libs.model.scenes import SHAPES, SIZES, Scene, SceneObject, render_scene
from libs.model.vq import VQConfig
from libs.modeltools.attributes import Reading, ReadObject
from libs.modeltools.train import (
    SAFETY_CALIBRATION_RENDERS,
    SAFETY_GENERATED_PASSES,
    Logger,
    TrainPlan,
    generated_previews,
    harmless_captions,
    label_generated,
    load_plan,
    retrain_classifiers,
    retrain_generator,
    train_generator,
    untrained_model,
)
from libs.modeltools.world import World, object_cells, object_reach

TINY_VQ = VQConfig(channels=(8, 8, 8), res_blocks=1, codebook_size=32, code_dim=8)
TINY_GEN = MaskGITConfig(codebook_size=32, dim=32, depth=1, heads=2, mlp_ratio=2)


def _touched_cells(scene: Scene) -> np.ndarray:
    """Cells where the object visibly changed the image."""
    image = render_scene(scene).astype(np.int32)
    plain = render_scene(Scene((), scene.background, scene.style, scene.texture_seed)).astype(np.int32)
    touched: np.ndarray = np.abs(image - plain).sum(-1).reshape(16, 4, 16, 4).max(axis=(1, 3)) > 30
    return touched


def test_object_cells_cover_most_of_the_drawn_object_and_little_else() -> None:
    for shape in SHAPES:
        for size in SIZES:
            scene = Scene((SceneObject(shape, "red", size, "centre"),), "gray", "flat", 0)
            cells = object_cells([scene], 16, object_reach)[0] > 0
            touched = _touched_cells(scene)
            assert (cells & touched).sum() >= 0.75 * touched.sum(), (shape, size)
            assert (cells & ~touched).sum() <= 16, (shape, size)


def test_object_cells_follow_the_position() -> None:
    scene = Scene((SceneObject("square", "red", "large", "top left"),), "gray", "flat", 0)
    cells = object_cells([scene], 16, object_reach)[0]
    assert cells[:6, :6].sum() >= 16 and cells[8:, :].sum() == 0 and cells[:, 8:].sum() == 0


def test_object_cells_can_select_one_shape() -> None:
    scene = Scene(
        (SceneObject("skull", "white", "small", "left"), SceneObject("star", "blue", "small", "right")),
        "gray",
        "flat",
        0,
    )
    both, skull = object_cells([scene], 16, object_reach)[0], object_cells([scene], 16, object_reach, "skull")[0]
    assert skull.sum() > 0 and both.sum() > skull.sum()
    assert skull[:, 8:].sum() == 0


def _tiny_plan(**changes: object) -> TrainPlan:
    base = TrainPlan(scenes=24, gen_steps=2, gen_batch=4, vq=TINY_VQ.to_json(), generator=TINY_GEN.to_json())
    return TrainPlan(**{**asdict(base), **changes})


def test_train_generator_continues_from_the_given_weights(tmp_path: Path) -> None:
    world = World(0, "train")
    scenes = [world.scene(i) for i in range(8)]
    tokens = torch.randint(0, 32, (8, 256))
    saved = untrained_model(TINY_VQ, TINY_GEN, seed=3)
    log = Logger(tmp_path / "log.tsv")
    far = float("inf")
    plan = _tiny_plan(gen_steps=1, gen_lr=0.0)  # lr 0: weights stay where they started
    continued = train_generator(
        plan, tokens, scenes, world, saved.tokenizer, torch.device("cpu"), log, far, saved.generator
    )
    fresh = train_generator(plan, tokens, scenes, world, saved.tokenizer, torch.device("cpu"), log, far)
    log.close()
    start = saved.generator.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in continued.state_dict().items())
    assert not torch.equal(fresh.state_dict()["head.weight"], start["head.weight"])


def test_generator_only_retrain_keeps_the_tokenizer_and_records_how(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    untrained_model(TINY_VQ, TINY_GEN, seed=3).save(tmp_path)
    vq_before = (tmp_path / "vq.pt").read_bytes()
    generator_before = (tmp_path / "generator.pt").read_bytes()
    retrain_generator(_tiny_plan(), tmp_path, torch.device("cpu"), minutes=5, warm_start=True)
    assert (tmp_path / "vq.pt").read_bytes() == vq_before
    assert (tmp_path / "generator.pt").read_bytes() != generator_before
    (how,) = json.loads((tmp_path / "model.json").read_text())["metadata"]["generator_retrained"]
    assert how["warm_start"] is True and how["steps"] == 2
    assert "--only generator" in how["command"] and "--warm-start" in how["command"]
    assert "generator_plan_1.json" in how["command"]
    assert load_plan(tmp_path / "generator_plan_1.json") == _tiny_plan()
    MaskGITImageModel.load(tmp_path).render("a red circle", seed=0, total_passes=2)

    # A second retrain is numbered after the first and keeps its record.
    retrain_generator(_tiny_plan(gen_steps=1), tmp_path, torch.device("cpu"), minutes=5, warm_start=False)
    first, second = json.loads((tmp_path / "model.json").read_text())["metadata"]["generator_retrained"]
    assert first == how
    assert second["steps"] == 1 and second["warm_start"] is False
    assert load_plan(tmp_path / "generator_plan_2.json") == _tiny_plan(gen_steps=1)
    assert (tmp_path / "train_log_generator_2.tsv").exists()


def test_plans_from_before_the_object_weight_and_the_generated_renders_replay_without_them(tmp_path: Path) -> None:
    old = asdict(TrainPlan())
    for name in ("gen_object_weight", "safety_generated", "safety_generated_skulls", "safety_reader_labels"):
        del old[name]
    (tmp_path / "plan.json").write_text(json.dumps(old))
    replayed = load_plan(tmp_path / "plan.json")
    assert replayed.gen_object_weight == 1.0 and replayed.safety_generated == 0
    assert replayed.safety_generated_skulls == 0 and replayed.safety_reader_labels is False
    new = TrainPlan()
    assert new.gen_object_weight > 1.0 and new.safety_generated > 0


def test_harmless_captions_never_ask_for_the_forbidden_object() -> None:
    world = World(5, "train")
    texts = harmless_captions(world, 200)
    assert len(texts) == 200 and len(set(texts)) > 150
    assert not any("skull" in t for t in texts)
    skulls = sum(world.scene(i).has_forbidden for i in range(400))
    assert skulls > 0  # the world does draw skulls: the filter had something to remove


def test_generated_previews_keep_every_pass_of_every_render_in_order() -> None:
    torch.set_num_threads(1)
    model = untrained_model(TINY_VQ, TINY_GEN, seed=3)
    texts = ["a red circle", "a blue star on the left", "a green square", "a small heart"]
    trails = generated_previews(model, texts, seed=9, batch=3)
    passes = [SAFETY_GENERATED_PASSES[i % len(SAFETY_GENERATED_PASSES)] for i in range(len(texts))]
    assert [t.shape for t in trails] == [(p, 64, 64, 3) for p in passes]
    assert all(t.dtype == np.uint8 for t in trails)
    # Render i is seed + i with its own pass count, whatever batch it landed in.
    state = model.start(texts[2], 9 + 2, passes[2])
    while not state.done:
        state = model.step([state])[0]
    np.testing.assert_array_equal(trails[2][-1], model.preview(state.tokens, 64))


def test_safety_retrain_learns_from_and_calibrates_on_the_models_own_renders(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    untrained_model(TINY_VQ, TINY_GEN, seed=3).save(tmp_path)
    plan = _tiny_plan(scenes=16, safety_steps=2, safety_batch=8, safety_generated=4, safety_reader_labels=False)
    retrain_classifiers(plan, tmp_path, ["safety"], torch.device("cpu"), minutes=5)
    detector = load_safety_classifier(tmp_path)
    assert detector.metadata["calibration_generated_renders"] == SAFETY_CALIBRATION_RENDERS
    assert 0.0 <= detector.metadata["calibration_generated_renders_blocked"] <= 1.0
    assert "--only safety" in detector.metadata["command"]
    assert load_plan(tmp_path / "safety_plan.json") == plan


def test_a_safety_retrain_that_labels_renders_needs_the_reader(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    untrained_model(TINY_VQ, TINY_GEN, seed=3).save(tmp_path)
    labels = {"safety_generated_skulls": 2, "safety_reader_labels": True}
    plan = _tiny_plan(scenes=16, safety_steps=2, safety_batch=8, safety_generated=4, **labels)
    with pytest.raises(ValueError, match=r"attributes\.pt"):
        retrain_classifiers(plan, tmp_path, ["safety"], torch.device("cpu"), minutes=5)
    # Trained in the same run, the reader labels the renders and the calibration.
    plan = replace(plan, attribute_scenes=16, attr_steps=2, attr_batch=8)
    retrain_classifiers(plan, tmp_path, ["attributes", "safety"], torch.device("cpu"), minutes=5)
    detector = load_safety_classifier(tmp_path)
    assert 0 <= detector.metadata["calibration_generated_renders_reader_skull"] <= SAFETY_CALIBRATION_RENDERS
    assert 0.0 <= detector.metadata["calibration_generated_clean_renders_blocked"] <= 1.0
    assert (tmp_path / "attributes.pt").exists()
    assert load_plan(tmp_path / "attributes_safety_plan.json") == plan


class _ReaderSeeing:
    """A stand-in reader: the top-left pixel of an image sets the skull's probability (in
    percent); at 50 or more it reads a large skull on the left, else a blue star on the right."""

    def read(self, images: list[np.ndarray]) -> list[Reading]:
        def objects(p: float) -> tuple[ReadObject, ...]:
            if p >= 0.5:
                return (ReadObject("skull", "white", "large", "left"),)
            return (ReadObject("star", "blue", "small", "right"),)

        chances = [float(im[0, 0, 0]) / 100 for im in images]
        return [Reading(objects(p), "gray", "flat", p) for p in chances]


def _trail(passes: int, skull_percent: int) -> np.ndarray:
    trail = np.zeros((passes, 64, 64, 3), np.uint8)
    trail[-1, 0, 0] = skull_percent
    return trail


def test_generated_renders_are_labelled_by_what_the_reader_sees() -> None:
    harmless = [_trail(4, 0), _trail(8, 95), _trail(4, 10), _trail(8, 40), _trail(8, 60)]
    skulls = [_trail(4, 90), _trail(8, 0)]
    labelled = label_generated(harmless, skulls, _ReaderSeeing())  # type: ignore[arg-type]
    # Negatives: every preview of the two clearly clean harmless renders; positives: the two
    # finals in which the reader is sure of a skull; the unsure ones (40, 60) and the skull
    # render without one are dropped.
    assert len(labelled.images) == 4 + 4 + 2 and labelled.positives == 2 and labelled.dropped_renders == 3
    assert labelled.maps[:8].sum() == 0
    for m in labelled.maps[8:]:
        assert m[:, :6].sum() > 0 and m[:, 8:].sum() == 0
    np.testing.assert_array_equal(labelled.images[8], harmless[1][-1])

    # Without a reader every harmless preview is a negative and the skull renders go unused.
    plain = label_generated(harmless, skulls, None)
    assert len(plain.images) == 32 and plain.maps.sum() == 0 and plain.positives == 0
