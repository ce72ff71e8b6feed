"""Where `make setup` put the tools (mirrors infra/scripts/setup.sh; keep them in step)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    """The pinned tool versions from infra/versions.env."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "infra" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            pinned[name] = value
    return pinned


def cache_dir() -> Path:
    """The cache outside the clone ($DARKROOM_CACHE, default ~/.cache/darkroom)."""
    return Path(os.environ.get("DARKROOM_CACHE", Path.home() / ".cache" / "darkroom"))


def kafka_home() -> Path:
    """The Kafka classpath folder for the pinned version and POM."""
    pom_hash = hashlib.sha256((ROOT / "infra" / "kafka" / "pom.xml").read_bytes()).hexdigest()[:12]
    return cache_dir() / "tools" / f"kafka-{versions()['KAFKA_VERSION']}-{pom_hash}"


def ferretdb_bin() -> Path:
    """The FerretDB binary, built with the patches in infra/ferretdb (their hash keys it)."""
    patches = b"".join(p.read_bytes() for p in sorted((ROOT / "infra" / "ferretdb").glob("*.patch")))
    patch_hash = hashlib.sha256(patches).hexdigest()[:12]
    return cache_dir() / "tools" / f"ferretdb-{versions()['FERRETDB_VERSION']}-{patch_hash}" / "ferretdb"


def minio_bin() -> Path:
    """The MinIO server binary."""
    return cache_dir() / "tools" / f"minio-{versions()['MINIO_VERSION']}" / "minio"


def kafka_classpath() -> str:
    """The Java classpath of the broker and its tools."""
    return str(kafka_home() / "libs" / "*")
