"""The safety detector's targets and shapes, and the adherence logic of the attribute reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from libs.model.safety_classifier import SafetyClassifier, SafetyNet, load_safety_classifier
from libs.model.scenes import Scene, SceneObject
from libs.modeltools.attributes import AttributeNet, Reading, ReadObject, satisfies, scene_read_correctly, scene_targets
from libs.modeltools.detector import detector_loss, target_maps
from libs.modeltools.world import Caption, ObjectClaim


def _scene(*objects: SceneObject) -> Scene:
    return Scene(tuple(objects), "gray", "flat", 0)


def test_target_maps_mark_only_skulls_where_they_are() -> None:
    skull = _scene(SceneObject("skull", "red", "large", "top left"), SceneObject("star", "blue", "large", "right"))
    plain = _scene(SceneObject("star", "blue", "small", "centre"))
    maps = target_maps([skull, plain])
    assert maps.shape == (2, 16, 16)
    assert maps[1].sum() == 0
    rows, cols = maps[0].nonzero(as_tuple=True)
    assert rows.float().mean() < 5 and cols.float().mean() < 5  # top left
    assert 3 <= maps[0].sum() <= 30


def test_detector_shapes_and_loss() -> None:
    net = SafetyNet(width=8)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert net.dense(x).shape == (2, 16, 16) and net(x).shape == (2,)
    loss, logits = detector_loss(net, x, target_maps([_scene(SceneObject("skull", "red", "large", "centre"))] * 2))
    assert loss.ndim == 0 and logits.shape == (2,)


def test_detector_loss_ignores_weighted_out_cells_and_images() -> None:
    net = SafetyNet(width=8).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    maps = target_maps([_scene(SceneObject("skull", "red", "large", "centre"))] * 2)
    full, _ = detector_loss(net, x, maps)
    zero_cells = torch.zeros_like(maps)
    ignored, _ = detector_loss(net, x, maps, cell_weight=zero_cells, image_weight=torch.zeros(2))
    assert float(ignored.detach()) == 0.0 and float(full.detach()) > 0.0


def test_classifier_saves_threshold_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clf = SafetyClassifier(SafetyNet(width=8), threshold=0.37, metadata={"command": "x"})
    clf.save(tmp_path / "safety.pt")
    loaded = load_safety_classifier(tmp_path)
    assert loaded.threshold == 0.37 and loaded.metadata["command"] == "x" and loaded.net.norm
    image = np.full((64, 64, 3), 128, np.uint8)
    assert abs(loaded.score(image) - clf.score(image)) < 1e-2


def test_the_shipped_detector_scores_as_its_net_with_batch_norms_folded() -> None:
    detector = load_safety_classifier()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        unfolded = torch.sigmoid(detector.net(x)).tolist()
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in detector._scoring.modules())
    np.testing.assert_allclose(detector.score_batch(images), unfolded, atol=1e-5)


def test_attribute_net_shapes_and_targets() -> None:
    out = AttributeNet(width=8)(torch.zeros(3, 3, 64, 64))
    assert out["shape"].shape == (3, 9, 10) and out["colour"].shape == (3, 9, 8) and out["size"].shape == (3, 9, 2)
    targets = scene_targets([_scene(SceneObject("heart", "pink", "small", "bottom"))])
    assert int(targets["shape"][0, 7]) == 1 + 5 and int((targets["shape"] > 0).sum()) == 1


def _reading(*objects: ReadObject) -> Reading:
    return Reading(tuple(objects), "gray", "flat", 0.0)


def test_satisfies_checks_only_stated_attributes_with_distinct_objects() -> None:
    red_circle = ObjectClaim("circle", "red", None, None)
    left_circle = ObjectClaim("circle", "red", None, "left")
    caption = Caption("a red circle and a red circle on the left", (red_circle, left_circle), None, None)
    one = _reading(ReadObject("circle", "red", "large", "left"))
    two = _reading(ReadObject("circle", "red", "small", "top"), ReadObject("circle", "red", "large", "left"))
    assert not satisfies(one, caption)  # two claims need two distinct objects
    assert satisfies(two, caption)
    assert satisfies(one, Caption("a red circle", (red_circle,), None, None), ("colour",))
    wrong = _reading(ReadObject("square", "red", "large", "left"))
    assert satisfies(wrong, Caption("a red circle", (red_circle,), None, None), ("colour",))
    assert not satisfies(wrong, Caption("a red circle", (red_circle,), None, None), ("shape", "colour"))
    on_night = Caption("a red circle at night", (red_circle,), "night", None)
    assert satisfies(one, on_night) and not satisfies(one, on_night, ("shape", "background"))


def test_scene_read_correctly_is_exact() -> None:
    scene = _scene(SceneObject("ring", "white", "small", "top"))
    assert scene_read_correctly(_reading(ReadObject("ring", "white", "small", "top")), scene)
    assert not scene_read_correctly(_reading(ReadObject("ring", "white", "large", "top")), scene)
