"""Every shipped recipe resolves against the stage configs (no unknown keys, right types)."""

from pathlib import Path

import pytest

from webly.app.cli import stage_configs
from webly.core.config import load_yaml, resolve_config

STAGE_CONFIGS = stage_configs()

RECIPES = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_resolves(path):
    if "steps" in load_yaml(path):  # a `webly run` pipeline recipe: validated whole
        from webly.app.pipeline import load_recipe

        load_recipe(path)
        return
    for stage, section in load_yaml(path).items():
        assert stage in STAGE_CONFIGS, f"{path}: unknown stage {stage}"
        resolve_config(STAGE_CONFIGS[stage], section, where=f"{path.name}:{stage}")


def test_seed_settings_in_webvision_recipes():
    cfg = load_yaml(Path(__file__).parent.parent / "configs/webvision2/resnest101_wt.yaml")
    ft = cfg["finetune"]
    assert (ft["lr"], ft["step_epochs"], ft["gamma"], ft["batch_size"], ft["accum_steps"]) == (0.01,
                                                                                               90,
                                                                                               0.1,
                                                                                               256,
                                                                                               8)
    assert ft["sampler"] == "balanced" and cfg["tag"]["max_vocab"] == 35000


def test_shipped_recipes_run_the_configs_they_are_pinned_to():
    """A change of a default changes no shipped recipe: every option the pinned resolution
    (tests/data/resolved_configs.json, written by `python tests/resolved.py`) holds is the same
    today. Options added later are not pinned; a recipe changed on purpose is pinned again."""
    import json

    from resolved import REPO, resolved_configs

    pinned = json.loads((REPO / "tests/data/resolved_configs.json").read_text())
    now = resolved_configs()
    changed = [f"{recipe} {step}.{key}: {value!r} -> {now[recipe][step].get(key)!r}"
               for recipe, steps in pinned.items() for step, cfg in steps.items()
               for key, value in cfg.items() if now[recipe][step].get(key) != value]
    assert not changed, "\n".join(changed)
