"""Training recipes: YAML files of run-config fields, one folder per recipe (`recipes/demo/`, `recipes/paper/`, or a
lab's own folder), one file per trainer (`sft.yaml`, `grpo.yaml`), and `recipe.yaml` for what the recipe teaches
besides the run configs (`RecipeChoices`).

Why YAML rather than Python presets: a lab reads, diffs and edits a recipe without reading code, and the profile
chooses a recipe instead of the code branching on the profile. The files are read by the strict loader
(`config.from_mapping`): an unknown key or a value of the wrong type fails, naming the file and the key. Why not
TRL's `TrlParser`: it is an `HfArgumentParser`, which accepts only `Optional[X]` unions, and the run configs have
`bool | Literal["auto"]` and `str | list[str]` fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from skinr1_pipeline.modeling.prompt_format import system_prompt_text
from skinr1_pipeline.training.config import ConfigError, from_mapping, load_mapping

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = ("demo", "paper")  # shipped with the package
STEPS = ("sft", "grpo")
CHOICES_FILE = "recipe.yaml"
T = TypeVar("T")


@dataclass(frozen=True)
class RecipeChoices:
    """What a recipe decides outside the trainers' run configs; `recipe.yaml` in its folder (optional: a lab's own
    folder without one gets these defaults, the paper's).

    Why in the recipe and not the profile: they depend on the model being taught. A tiny model trained from random
    weights needs short rationales and a drill in reading option lists; a pretrained 7B model needs neither.
    """

    rationale_style: Literal["full", "compact"] = "full"  # how the SkinRationale trajectories are written
    # How the trajectories' multiple-choice options are drawn: `paper` (the label's ancestors among them, the deepest
    # correct: the authors' construction, which an image-blind structure guess partly answers) or `set_first` (one
    # taxonomy level, nothing in the list points at the answer).
    mcq_construction: Literal["paper", "set_first"] = "paper"
    # How taught multiple-choice answers name the option (`modeling.prompt_format.ANSWER_FORMS`): `letter` ("B. text",
    # after one "fits / does not fit" line per option in compact rationales) or `text` (the offered text alone, after
    # the diagnosis's taxonomy path: copying a name instead of looking up its letter).
    answer_form: Literal["letter", "text"] = "letter"
    # The system prompt every stage shows the model (`modeling.prompt_format.SYSTEM_PROMPTS`): `full` (the paper's
    # instructions) or `compact` (the same format contract, a fifth of the tokens). One choice here, not a field per
    # trainer file, so the drill, SFT, GRPO, the gates and the evaluation cannot show the model different prompts.
    system_prompt: Literal["full", "compact"] = "full"
    option_drill_rows: int = 0  # option-reading drill rows mixed into the SFT data
    caveat: str = ""  # said at the top of every evaluation report of models trained by this recipe

    def __post_init__(self) -> None:
        if self.option_drill_rows < 0:
            raise ConfigError(f"option_drill_rows must be >= 0, got {self.option_drill_rows}")

    def system_text(self) -> str:
        return system_prompt_text(self.system_prompt)


def recipe_folder(recipe: str | Path) -> Path:
    """A shipped recipe's folder by name, else `recipe` as a folder path."""
    return RECIPES_DIR / str(recipe) if str(recipe) in RECIPES else Path(recipe).expanduser()


def recipe_choices(recipe: str | Path) -> RecipeChoices:
    """The recipe's `recipe.yaml` (unknown keys and wrong types fail, naming the file); defaults without one."""
    path = recipe_folder(recipe) / CHOICES_FILE
    if not path.is_file():
        return RecipeChoices()
    try:
        return from_mapping(RecipeChoices, load_mapping(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def check_recipe(recipe: str | Path) -> None:
    """Fail now, naming the missing file, if `recipe` lacks a trainer's file or has a bad `recipe.yaml`."""
    for step in STEPS:
        recipe_path(recipe, step)
    recipe_choices(recipe)


def recipe_path(recipe: str | Path, step: str) -> Path:
    """The file of `step` in `recipe`: a shipped recipe's name, or a folder holding `<step>.yaml`."""
    if step not in STEPS:
        raise ConfigError(f"no training step {step!r}; steps: {list(STEPS)}")
    path = recipe_folder(recipe) / f"{step}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"training recipe {recipe!r} has no {step}.yaml (looked for {path}); "
            f"a recipe is one of {list(RECIPES)} or a folder holding sft.yaml and grpo.yaml"
        )
    return path


def build_run_config(cls: type[T], recipe: str | Path, step: str, **values: Any) -> T:
    """`cls` from the recipe's fields, and the system prompt its `recipe.yaml` chooses, with `values` (paths, the
    user's overrides) laid over them."""
    path = recipe_path(recipe, step)
    fields = load_mapping(path)
    if "system_prompt" in fields:  # one prompt for every stage: see RecipeChoices.system_prompt
        raise ConfigError(f"{path}: set system_prompt in {CHOICES_FILE} (one prompt for every stage), not per trainer")
    fields["system_prompt"] = recipe_choices(recipe).system_text()
    try:
        return from_mapping(cls, {**fields, **values})
    except ConfigError as exc:
        raise ConfigError(f"{path} (+ {sorted(values)}): {exc}") from exc
