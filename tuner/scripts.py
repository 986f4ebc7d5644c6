"""Study scripts: a file in studies/ that defines `STUDY` (a StudySpec or a StudyGroup)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from tuner.errors import UserError


def load_study_script(path: str) -> Any:
    """Import the script at `path` and return its STUDY; UserError when that cannot be done."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"study script {path} not found; give the path of a file such as studies/quickstart.py")
    if file.suffix != ".py":
        raise UserError(f"study script {path} is not a .py file")
    try:
        source = file.read_text()
        compile(source, str(file), "exec")
    except SyntaxError as exc:
        raise UserError(f"study script {path} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"study script {path} cannot be read: {exc}") from None
    # As `python script.py` does: the script's folder first on sys.path, so that a package beside it
    # imports. The script is a module of its own name, so that worker processes import a trainable
    # defined in it by the same path (the plan records the folder); a name already taken gets a private one.
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = file.stem if file.stem.isidentifier() and file.stem not in sys.modules else f"tuner_study_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling need the module registered
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"study script {path} failed to load: {type(exc).__name__}: {exc}") from exc
    from tuner.group import StudyGroup
    from tuner.study import StudySpec

    study = getattr(module, "STUDY", None)
    if not isinstance(study, StudySpec | StudyGroup):
        raise UserError(f"study script {path} defines no STUDY; add e.g. STUDY = StudySpec(name='my-study')")
    return study
