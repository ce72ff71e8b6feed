"""The tools around darkroom's built-in model: training, evaluation and validation.

Run by people and the operators' CLI, never by a service at run time (the services import
libs.model only, which imports nothing from here; tests/unit/test_layering.py checks both).

Modules:
    world        the captioned synthetic world the model is trained and evaluated on
    train        `python -m libs.modeltools.train` (`make train-model`)
    eval         `python -m libs.modeltools.eval` (`make eval-model`), the model card's figures
    attributes   the attribute classifier that reads scenes back, to measure prompt adherence
    detector     the safety detector's training targets and loss
    validation   the content detector on a model version's renders (`darkroom models validate`)
"""
