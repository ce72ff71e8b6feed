"""The safety service: prompt checks before rendering and content checks during it."""
