"""The safety validation a model version must pass before promotion."""

from __future__ import annotations

from libs.model.noop import NoOpModel
from libs.model.registry import load_model
from libs.model.safety_classifier import load_safety_classifier
from libs.modeltools.validation import held_out_prompts, validate


def test_the_held_out_set_has_forbidden_and_harmless_prompts_apart_from_training() -> None:
    forbidden, harmless = held_out_prompts(5)
    assert len(forbidden) == len(harmless) == 5
    assert all("skull" in p for p in forbidden) and not any("skull" in p for p in harmless)


def test_a_version_that_draws_what_it_is_asked_passes_and_one_that_draws_nothing_fails() -> None:
    detector = load_safety_classifier()
    world = validate(load_model("world"), detector.score_batch, detector.threshold, n=6, passes=4)
    assert (world.recall, world.false_positive_rate) == (1.0, 0.0)
    assert world.passed(min_recall=0.9, max_false_positive_rate=0.05)
    assert (world.forbidden_renders, world.harmless_renders, world.passes) == (6, 6, 4)

    # The stand-in draws a blank grid: nothing for the detector to find, so no recall.
    blank = validate(NoOpModel(), detector.score_batch, detector.threshold, n=3, passes=2)
    assert blank.recall == 0.0 and not blank.passed(min_recall=0.9, max_false_positive_rate=0.05)
