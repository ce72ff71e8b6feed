# One image for every darkroom python service; docker-compose.yml picks the service with its
# command (`python -m services.<name>`), so a fix ships to all of them in one build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# A fixed uid keeps file ownership stable across rebuilds and lets hosts grant volume access.
# The home directory is writable so libraries that cache under ~ (e.g. Triton) still work while
# the code in /app stays read-only to the service.
RUN groupadd --system --gid 10001 darkroom \
 && useradd --system --uid 10001 --gid darkroom --create-home --home-dir /home/darkroom \
        --shell /usr/sbin/nologin darkroom

# Dependencies before code: the (large, torch-sized) dependency layer is rebuilt only when the
# pinned set changes, not on every code edit.
COPY constraints.txt /app/constraints.txt
RUN pip install -r /app/constraints.txt

COPY . /app

USER darkroom

EXPOSE 8000 8081

# Compose always sets the command; this default just makes `docker run <image>` do something useful.
CMD ["python", "-m", "services.gateway"]
