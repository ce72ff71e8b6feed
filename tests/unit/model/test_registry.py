"""The registry of model loaders: names resolve to kinds, kinds load lazily, nothing loads early."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.model import registry
from libs.model.interface import DEFAULT_WEIGHTS_DIR
from libs.model.noop import NoOpModel
from libs.model.registry import ModelKind, kinds, load_model, register_loader, resolve, weights_folder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made in a test are gone after it."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.setattr(registry, "_NAMES", dict(registry._NAMES))
    yield


def test_the_shipped_kinds() -> None:
    assert set(kinds()) == {"builtin", "world", "noop", "amused"}
    for name in ("builtin", "darkroom-mini", "default", None):
        kind, argument = resolve(name) or (None, None)
        assert kind is not None and kind.name == "builtin" and argument is None
    resolved = [resolve("noop:0.06+0.09"), resolve("amused:/srv/a")]
    assert [(r[0].name, r[1]) for r in resolved if r is not None] == [
        ("noop", "0.06+0.09"),
        ("amused", "/srv/a"),
    ]


@pytest.mark.parametrize("kind", sorted(kinds()))
def test_every_shipped_loader_reference_names_a_function(kind: str) -> None:
    reference = kinds()[kind].loader
    assert isinstance(reference, str)
    assert callable(registry._loader(kinds()[kind]))


def test_a_folder_is_the_builtin_format_and_module_factory_an_operators_model(tmp_path: Path) -> None:
    kind, argument = resolve(str(tmp_path)) or (None, None)
    assert kind is not None and kind.name == "builtin" and argument == str(tmp_path)
    assert resolve("my_models.big:factory") is None
    with pytest.raises(FileNotFoundError):
        resolve("/nonexistent/model/dir")


def test_the_noop_stand_in() -> None:
    assert isinstance(load_model("noop"), NoOpModel)
    stand_in = load_model("noop:0.25")
    assert isinstance(stand_in, NoOpModel) and stand_in.pass_seconds == 0.25
    batched = load_model("noop:0.06+0.09")
    assert isinstance(batched, NoOpModel) and batched.image_seconds == 0.09
    for bad in ("noop:fast", "noop:-1", "noop:61"):
        with pytest.raises(ValueError, match="seconds per pass"):
            load_model(bad)


def test_an_operators_factory() -> None:
    model = load_model("tests.unit.model.test_registry:_noop_factory")
    assert isinstance(model, NoOpModel) and model.pass_seconds == 0.001
    with pytest.raises(FileNotFoundError):
        load_model("/nonexistent/model/dir")


def test_a_factory_must_return_a_model() -> None:
    with pytest.raises(TypeError):
        load_model("tests.unit.model.test_registry:_not_a_model")


def test_weights_folders() -> None:
    assert weights_folder("builtin") == DEFAULT_WEIGHTS_DIR
    assert weights_folder("darkroom-mini") == DEFAULT_WEIGHTS_DIR
    assert weights_folder("world") == DEFAULT_WEIGHTS_DIR
    assert weights_folder("amused:/srv/amused-256") == Path("/srv/amused-256")
    assert weights_folder(str(DEFAULT_WEIGHTS_DIR)) == DEFAULT_WEIGHTS_DIR
    assert weights_folder("noop:0.1") is None
    assert weights_folder("tests.unit.model.test_registry:_noop_factory") is None


@pytest.mark.usefixtures("scratch_registry")
def test_a_registered_kind_loads_with_its_argument() -> None:
    seen: list[tuple[str | None, str]] = []

    def loader(argument: str | None, device: str) -> NoOpModel:
        seen.append((argument, device))
        return NoOpModel()

    register_loader(ModelKind("tiny", loader, aliases=("small",)))
    assert isinstance(load_model("tiny:v2", "cuda"), NoOpModel)
    assert isinstance(load_model("small"), NoOpModel)
    assert seen == [("v2", "cuda"), (None, "cpu")]
    # Registered again under its own name it is replaced, aliases and all.
    register_loader(ModelKind("tiny", loader))
    with pytest.raises(FileNotFoundError):
        load_model("small")


@pytest.mark.usefixtures("scratch_registry")
def test_names_are_not_taken_twice() -> None:
    with pytest.raises(ValueError, match="already names"):
        register_loader(ModelKind("other", "x.y:load", aliases=("default",)))
    with pytest.raises(ValueError, match="without a colon"):
        register_loader(ModelKind("a:b", "x.y:load"))


@pytest.mark.usefixtures("scratch_registry")
def test_a_missing_dependency_says_what_to_install() -> None:
    register_loader(ModelKind("big", "darkroom_not_installed.big:load", requires="the big-model package"))
    with pytest.raises(ModuleNotFoundError, match=r"big:/x: the big kind needs the big-model package .*make setup"):
        load_model("big:/x")


def test_naming_a_model_imports_no_model_and_no_torch() -> None:
    # A fresh interpreter: this process has imported torch already.
    code = (
        "import sys\n"
        "from libs.model import load_model\n"
        "from libs.model.registry import kinds, resolve, weights_folder\n"
        "for name in ('builtin', 'world', 'noop:0.1', 'amused:/x', 'm.n:f'):\n"
        "    resolve(name); weights_folder(name)\n"
        "load_model('noop:0.01')\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('libs.model.', 'libs.modeltools')))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["libs.model.interface", "libs.model.noop", "libs.model.registry"]


def _noop_factory(device: str = "cpu") -> NoOpModel:
    return NoOpModel(pass_seconds=0.001)


def _not_a_model(device: str = "cpu") -> object:
    return object()
