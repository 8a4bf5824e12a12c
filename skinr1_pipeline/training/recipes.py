"""Training recipes: YAML files of run-config fields, one folder per recipe (`recipes/demo/`, `recipes/paper/`, or a
lab's own folder), one file per trainer (`sft.yaml`, `grpo.yaml`).

Why YAML rather than Python presets: a lab reads, diffs and edits a recipe without reading code, and the profile
chooses a recipe instead of the code branching on the profile. The files are read by the strict loader
(`config.from_mapping`): an unknown key or a value of the wrong type fails, naming the file and the key. Why not
TRL's `TrlParser`: it is an `HfArgumentParser`, which accepts only `Optional[X]` unions, and the run configs have
`bool | Literal["auto"]` and `str | list[str]` fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from skinr1_pipeline.training.config import ConfigError, from_mapping, load_mapping

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = ("demo", "paper")  # shipped with the package
STEPS = ("sft", "grpo")
T = TypeVar("T")


def recipe_path(recipe: str | Path, step: str) -> Path:
    """The file of `step` in `recipe`: a shipped recipe's name, or a folder holding `<step>.yaml`."""
    if step not in STEPS:
        raise ConfigError(f"no training step {step!r}; steps: {list(STEPS)}")
    folder = RECIPES_DIR / str(recipe) if str(recipe) in RECIPES else Path(recipe).expanduser()
    path = folder / f"{step}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"training recipe {recipe!r} has no {step}.yaml (looked for {path}); "
            f"a recipe is one of {list(RECIPES)} or a folder holding sft.yaml and grpo.yaml"
        )
    return path


def build_run_config(cls: type[T], recipe: str | Path, step: str, **values: Any) -> T:
    """`cls` from the recipe's fields with `values` (paths, the user's overrides) laid over them."""
    path = recipe_path(recipe, step)
    try:
        return from_mapping(cls, {**load_mapping(path), **values})
    except ConfigError as exc:
        raise ConfigError(f"{path} (+ {sorted(values)}): {exc}") from exc
