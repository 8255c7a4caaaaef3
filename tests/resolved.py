"""Every shipped recipe's resolved stage configs, as plain data: what
`tests/data/resolved_configs.json` pins (a change of a default must not change what a shipped
recipe runs). Training configs are taken as they train (`TrainConfig.concrete`: automatic values
decided)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _plain(cfg: Any) -> dict[str, Any]:
    return asdict(cfg.concrete() if hasattr(cfg, "concrete") else cfg)


def resolved_configs() -> dict[str, Any]:
    from webly.app.cli import stage_configs
    from webly.app.pipeline import _refs, load_recipe
    from webly.app.stages import BY_NAME, config_class
    from webly.core.config import load_yaml, resolve_config

    configs = stage_configs()
    out: dict[str, Any] = {}
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        name = path.relative_to(REPO).as_posix()
        raw = load_yaml(path)
        if "steps" in raw:
            _, steps = load_recipe(path)
            out[name] = {s.id: _plain(resolve_config(
                config_class(BY_NAME[s.stage].name),
                {k: v for k, v in s.options.items() if not _refs(v)}, where=s.id))
                for s in steps}
        else:
            out[name] = {stage: _plain(resolve_config(configs[stage], section, where=name))
                         for stage, section in raw.items()}
    return json.loads(json.dumps(out, default=str))


if __name__ == "__main__":
    (REPO / "tests/data/resolved_configs.json").write_text(
        json.dumps(resolved_configs(), indent=1, sort_keys=True) + "\n")
