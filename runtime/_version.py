"""The qfsdk version (read by pyproject.toml; lives in the runtime so the runtime is self-contained)."""

__version__ = "0.1.0"
