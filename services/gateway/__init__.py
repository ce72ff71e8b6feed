"""The gateway: darkroom's only HTTP entry point (FastAPI)."""
