"""Publishing every event's JSON Schema for operators and other languages."""

from __future__ import annotations

from pathlib import Path

import orjson

from libs.events import REGISTRY


def render_schemas() -> dict[str, bytes]:
    """File name -> content of every published schema, plus an index."""
    files: dict[str, bytes] = {}
    index = []
    for name, schema in REGISTRY.json_schemas().items():
        files[f"{name}.json"] = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        index.append(
            {"type": schema["x-darkroom-type"], "version": schema["x-darkroom-version"], "file": f"{name}.json"}
        )
    files["index.json"] = orjson.dumps(index, option=orjson.OPT_INDENT_2) + b"\n"
    return files


def export_schemas(directory: Path) -> list[Path]:
    """Write the schemas into `directory`, removing stale ones; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render_schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written
