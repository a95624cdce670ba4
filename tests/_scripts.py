"""The project's scripts (tasks.py, scripts/*.py) as modules, for the tests that call their functions."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str | None = None):
    """The script at ``path`` imported as a fresh module (named ``name``, default the file's stem)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
