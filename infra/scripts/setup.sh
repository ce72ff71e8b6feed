#!/usr/bin/env bash
# Installs everything darkroom needs, idempotently.
#
# Heavy artefacts live in a cache outside the clone ($DARKROOM_CACHE, default
# ~/.cache/darkroom), each keyed by its version or lock hash, so a fresh clone on a
# machine that has set up before only re-links them (seconds). Nothing is downloaded
# from anywhere but the package registries (PyPI, Maven Central, the Go module proxy,
# Debian).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${DARKROOM_CACHE:-$HOME/.cache/darkroom}"
# shellcheck source=../versions.env
source "$ROOT/infra/versions.env"
mkdir -p "$CACHE/tools" "$CACHE/venvs" "$CACHE/logs"

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    done in %ss\n' "$(( $(date +%s) - $1 ))"; }

# --- Debian packages: kcat (topics from the shell), chromium (the browser tests) ----
# Installed with apt when run as root; otherwise the reason to install it is printed.
# Playwright drives the system chromium; it never downloads a browser of its own.
debian_package() {
  local name="$1" why="$2"
  step "$name"
  if command -v "$name" >/dev/null 2>&1; then
    echo "    present: $(command -v "$name")"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    local t
    t=$(date +%s)
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$name" >/dev/null
    echo "    installed: $(command -v "$name")"
    elapsed "$t"
  else
    echo "    $name missing and not root: install Debian's $name package $why" >&2
  fi
}
debian_package kcat "to read topics from the shell"
debian_package chromium "to run the browser tests"

# --- Python environment, keyed by the lock file and interpreter ---------------------
step "Python environment"
PYTHON="${PYTHON:-python3}"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
LOCK_HASH="$(cat "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
VENV="$CACHE/venvs/py$PY_VERSION-$LOCK_HASH"
if [ -f "$VENV/.complete" ]; then
  echo "    cached: $VENV"
else
  t=$(date +%s)
  echo "    building $VENV (first time for this lock: torch is several GB, expect minutes)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --progress-bar off -r "$ROOT/constraints.txt" \
    | grep -E '^(Collecting|Successfully)' | sed 's/^/    /' || true
  "$VENV/bin/python" -c 'import torch, aiokafka, faust, fastapi, pymongo, minio, opentelemetry.sdk, openai, playwright.async_api, diffusers, transformers'
  touch "$VENV/.complete"
  elapsed "$t"
fi
ln -sfn "$VENV" "$ROOT/.venv"

# --- Apache Kafka from Maven Central ---------------------------------------------
step "Apache Kafka $KAFKA_VERSION"
POM_HASH="$(sha256sum "$ROOT/infra/kafka/pom.xml" | cut -c1-12)"
KAFKA_HOME="$CACHE/tools/kafka-$KAFKA_VERSION-$POM_HASH"
if [ -f "$KAFKA_HOME/.complete" ]; then
  echo "    cached: $KAFKA_HOME"
else
  t=$(date +%s)
  rm -rf "$KAFKA_HOME"; mkdir -p "$KAFKA_HOME/libs"
  mvn -q -B -Dstyle.color=never -f "$ROOT/infra/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs"
  echo "    $(ls "$KAFKA_HOME/libs" | wc -l) jars"
  touch "$KAFKA_HOME/.complete"
  elapsed "$t"
fi

# --- FerretDB (MongoDB wire protocol on SQLite) -----------------------------------
step "FerretDB $FERRETDB_VERSION"
# FerretDB is patched (infra/ferretdb/*.patch); the patches' hash is part of its cache key.
FERRETDB_PATCH_HASH="$(LC_ALL=C; cat infra/ferretdb/*.patch | sha256sum | cut -c1-12)"
FERRETDB_BIN="$CACHE/tools/ferretdb-$FERRETDB_VERSION-$FERRETDB_PATCH_HASH/ferretdb"
if [ -x "$FERRETDB_BIN" ]; then
  echo "    cached: $FERRETDB_BIN"
else
  t=$(date +%s)
  # `go install pkg@version` asks the proxy for the module's version list to check
  # deprecation, and the proxy refuses that list for FerretDB; so download the exact
  # version and build it inside its own module. FerretDB embeds its version from
  # build/version/version.txt, which release builds generate and the module lacks.
  src="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
        | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  build="$(mktemp -d)"
  cp -r "$src/." "$build/" && chmod -R u+w "$build"
  echo "$FERRETDB_VERSION" > "$build/build/version/version.txt"
  for p in infra/ferretdb/*.patch; do patch -s -d "$build" -p1 < "$p"; done
  mkdir -p "$(dirname "$FERRETDB_BIN")"
  (cd "$build" && GOFLAGS=-mod=mod go build -trimpath -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb)
  rm -rf "$build"
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  elapsed "$t"
fi

# --- MinIO server ------------------------------------------------------------------
step "MinIO $MINIO_VERSION"
MINIO_BIN="$CACHE/tools/minio-$MINIO_VERSION/minio"
if [ -x "$MINIO_BIN" ]; then
  echo "    cached: $MINIO_BIN"
else
  t=$(date +%s)
  echo "    building from source (first time: 5-15 minutes on 2 cores)"
  GOBIN="$(dirname "$MINIO_BIN")" go install "github.com/minio/minio@$MINIO_VERSION"
  elapsed "$t"
fi

step "setup complete"
