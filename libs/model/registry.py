"""The registry of model loaders: how a model's name becomes an ImageModel.

Why a registry: the decoder, the safety service and the operators' CLI name a model in settings
and on the policy topic ("builtin", "world", "noop:0.15", "amused:/srv/amused-256", a weights
folder, "package.module:factory"). Each kind of model registers a loader under its name, as a
"module:function" reference that is imported on first use, so this module imports no model:
naming a model costs nothing until it loads, torch loads only with a torch model, and models
depend on `libs.model.interface` without anything there depending on them back (vLLM's model
registry keeps its architectures as lazy references for the same reasons).

How a name resolves, first match wins:
    "KIND" or an alias of it        the kind, with no argument ("builtin", "default", "world")
    "KIND:ARGUMENT"                 the kind with an argument ("noop:0.15", "amused:/path")
    a folder (or a model.json path) the built-in format saved there ("builtin" with that folder)
    "package.module:factory"        an operator's own model: factory(device=device)

A loader is `loader(argument, device) -> ImageModel`, argument None when the name has none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from libs.model.interface import DEFAULT_WEIGHTS_DIR, ImageModel

ModelLoader = Callable[[str | None, str], ImageModel]
"""(argument, device) -> the model."""

BUILTIN: Final = "builtin"
"""The kind of the built-in model, and of any folder of weights in its format."""


@dataclass(frozen=True)
class ModelKind:
    """One kind of model the registry loads.

    Attributes:
        name: The kind's name: a model name is the kind, or "kind:argument".
        loader: The loader, or "module:function" naming it (imported on first use).
        aliases: Other names of the kind without an argument.
        folder: argument -> the folder whose files the model loads (None: the model has none);
            the checksum of a model version is taken over it (libs.releases).
        requires: What a missing import means, for the error message ("diffusers and
            transformers").
    """

    name: str
    loader: ModelLoader | str
    aliases: tuple[str, ...] = ()
    folder: Callable[[str | None], Path | None] = lambda argument: None
    requires: str = ""


_KINDS: dict[str, ModelKind] = {}
_NAMES: dict[str, str] = {}
"""Every name without an argument (kinds and aliases) -> its kind."""


def register_loader(kind: ModelKind) -> None:
    """Registers a kind of model (replacing one of the same name).

    Raises:
        ValueError: the name or an alias is taken by another kind, or holds a colon.
    """
    names = (kind.name, *kind.aliases)
    for name in names:
        if not name or ":" in name:
            raise ValueError(f"{name!r}: a kind's name is a word without a colon")
        owner = _NAMES.get(name)
        if owner is not None and owner != kind.name:
            raise ValueError(f"{name!r} already names the {owner!r} kind")
    previous = _KINDS.pop(kind.name, None)
    if previous is not None:
        for name in (previous.name, *previous.aliases):
            _NAMES.pop(name, None)
    _KINDS[kind.name] = kind
    _NAMES.update(dict.fromkeys(names, kind.name))


def kinds() -> dict[str, ModelKind]:
    """The registered kinds, by name."""
    return dict(_KINDS)


def resolve(name_or_path: str | None) -> tuple[ModelKind, str | None] | None:
    """The kind and argument a model name stands for; None for an operator's "module:factory".

    Raises:
        FileNotFoundError: the name is no kind, no folder and no "module:factory".
    """
    if name_or_path is None:
        return _KINDS[BUILTIN], None
    if name_or_path in _NAMES:
        return _KINDS[_NAMES[name_or_path]], None
    prefix, colon, argument = name_or_path.partition(":")
    if colon and prefix in _KINDS:
        return _KINDS[prefix], argument
    path = Path(name_or_path)
    if path.is_dir() or (path / "model.json").exists():
        return _KINDS[BUILTIN], name_or_path
    if colon and not path.exists():
        return None
    raise FileNotFoundError(f"no model named or stored at {name_or_path!r}")


def load_model(name_or_path: str | None = None, device: str = "cpu") -> ImageModel:
    """Loads an image model by name (see the module docstring for how names resolve).

    Args:
        name_or_path: None or "builtin" (also "darkroom-mini", "default"): the built-in model
            from libs/model/weights/. "noop": NoOpModel; "noop:S" (S a number): NoOpModel
            sleeping S seconds per pass, a stand-in of fixed cost; "noop:S+I": S seconds per
            pass plus I per further image of a batched pass. "world": WorldModel (draws the
            prompt's scene procedurally, through the built-in VQ). "amused:/path/to/folder": an
            aMUSEd pipeline folder saved by diffusers (libs.model.amused). A directory path: a
            built-in-format model saved there (model.json plus weight files).
            "package.module:factory": an operator's own model; `factory(device=device)` must
            return an ImageModel.
        device: Torch device for models that use torch ("cpu", "cuda", "cuda:1"...).

    Returns:
        The model, ready for `start`/`step`.

    Raises:
        FileNotFoundError: the weights are missing. TypeError: a factory returned something that
        is not an ImageModel. ModuleNotFoundError: a kind's dependencies are not installed.
    """
    resolved = resolve(name_or_path)
    if resolved is None:
        assert name_or_path is not None
        module_name, _, attr = name_or_path.partition(":")
        factory: Any = getattr(importlib.import_module(module_name), attr)
        model = factory(device=device)
        if not isinstance(model, ImageModel):
            raise TypeError(f"{name_or_path} returned {type(model).__name__}, not an ImageModel")
        return model
    kind, argument = resolved
    try:
        return _loader(kind)(argument, device)
    except ModuleNotFoundError as exc:
        if not kind.requires:
            raise
        raise ModuleNotFoundError(
            f"{name_or_path}: the {kind.name} kind needs {kind.requires} ({exc}); run `make setup`"
        ) from exc


def weights_folder(name_or_path: str) -> Path | None:
    """The folder whose files a model name loads, when it has one ("module:factory" has none).

    Raises:
        FileNotFoundError: the name is no kind, no folder and no "module:factory".
    """
    resolved = resolve(name_or_path)
    if resolved is None:
        return None
    kind, argument = resolved
    return kind.folder(argument)


def _loader(kind: ModelKind) -> ModelLoader:
    if not isinstance(kind.loader, str):
        return kind.loader
    module_name, _, attr = kind.loader.partition(":")
    loader: ModelLoader = getattr(importlib.import_module(module_name), attr)
    return loader


def _folder_or_default(argument: str | None) -> Path:
    return Path(argument) if argument else DEFAULT_WEIGHTS_DIR


# The kinds darkroom ships. Each module's `load` is imported only when a model of its kind loads.
register_loader(
    ModelKind(BUILTIN, "libs.model.builtin:load", aliases=("darkroom-mini", "default"), folder=_folder_or_default)
)
register_loader(ModelKind("world", "libs.model.world_model:load", folder=_folder_or_default))
register_loader(ModelKind("noop", "libs.model.noop:load"))
register_loader(
    ModelKind(
        "amused",
        "libs.model.amused:load",
        folder=lambda argument: Path(argument) if argument else None,
        requires="diffusers and transformers",
    )
)
