"""`webly run RECIPE.yaml`: a whole experiment as an ordered list of steps in one run directory.

    run_dir: runs/demo            # -o overrides
    steps:
      - {id: data, stage: synth, families: 4}
      - {id: manifest, stage: index, root: "@data"}
      - {id: tags, stage: tag, manifest: "@manifest", min_count: 3}
      - {id: wt, stage: pretrain, set: wt, manifest: "@manifest", tags: "@tags", epochs: 3}
      - {id: ft, stage: finetune, manifest: "@manifest", pretrained: "@wt", epochs: 4}
      - {id: val, stage: predict, model: "@ft", manifest: "@manifest", split: val}
      - {id: score, stage: evaluate, preds: "@val", manifest: "@manifest"}

Each step writes into RUN/<id>/. "@id" anywhere in a step's values is that step's output (the
manifest file for `index`, the folder otherwise; a training run's checkpoint where a checkpoint is
expected). The whole recipe is validated before anything runs: unknown stages, options or
references are errors naming the step and what is valid. A finished step records its hash (stage,
options, and the hashes of the steps it reads) in RUN/<id>/step.json; a rerun skips steps whose
hash is unchanged, reruns those whose inputs or options changed (clearing the step's folder first),
and resumes an interrupted training step from its last checkpoint when it was started with the
same hash (RUN/<id>/step.started); otherwise it starts over. Ctrl-C leaves the run resumable.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webly import faults
from webly.config import load_yaml, resolve_config
from webly.errors import WeblyError
from webly.files import write_atomic


@dataclass
class StageSpec:
    config: type | None  # options resolved into this dataclass
    inputs: tuple[str, ...]  # path-valued keys (may be @references)
    run: Callable[[dict[str, Any], Any, Path, bool], dict[str, Any]]
    output: str = ""  # file inside the step folder that @id means ("" = the folder)
    optional: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # plain (non-config, non-path) keys


def _specs() -> dict[str, StageSpec]:
    from webly.data.index import IndexConfig, index_dataset
    from webly.data.labels import load_labels
    from webly.data.manifest import Manifest
    from webly.data.shards import ShardConfig, write_shards
    from webly.demo.synth import SynthConfig, generate
    from webly.inference.predict import PredictConfig, predict
    from webly.inference.pseudolabel import PseudoLabelConfig, pseudo_label
    from webly.labels.tagging import TagConfig, tag
    from webly.labels.weighing import WeighConfig, weigh
    from webly.training.engine import TrainConfig, train
    from webly.training.trainsets import finetune_data, pretrain_data

    def synth(i, cfg, out, _):
        recs = generate(out, cfg)
        return {s: len(r) for s, r in recs.items()}

    def finetune(i, cfg, out, resume):
        m = Manifest(i["manifest"])
        labels = load_labels(i["labels"], len(m)) if i.get("labels") else None
        return train(finetune_data(m, labels), cfg, out, task="finetune", resume=resume)

    def pretrain(i, cfg, out, resume):
        src = i.get("tags") if i["set"] == "wt" else i.get("weights")
        if not src:
            raise WeblyError(f"pretrain --set {i['set']} needs {'tags' if i['set'] == 'wt' else 'weights'}")
        return train(pretrain_data(Manifest(i["manifest"]), i["set"], src), cfg, out,
                     task=f"pretrain_{i['set']}", resume=resume)

    def ensemble_(i, cfg, out, _):
        from webly.data.labels import read_name_labels as read_labels
        from webly.inference.ensemble import ensemble

        fit = i.get("fit")
        return ensemble(i["preds"], out, i.get("weights"), fit,
                        read_labels(i["fit_labels"]) if fit else None)

    def evaluate_(i, cfg, out, _):
        from webly.inference.evaluate import evaluate

        return evaluate(i["preds"], i["manifest"], out, i.get("labels"))

    def submit_(i, cfg, out, _):
        from webly.inference.evaluate import submit

        return submit(i["preds"], out / "predictions.txt")

    return {
        "synth": StageSpec(SynthConfig, (), synth),
        "index": StageSpec(IndexConfig, ("root",), lambda i, c, o, r: index_dataset(i["root"], o / "manifest.parquet", c),
                           output="manifest.parquet"),
        "shard": StageSpec(ShardConfig, ("manifest",), lambda i, c, o, r: write_shards(i["manifest"], o, c, log=lambda _: None)),
        "tag": StageSpec(TagConfig, ("manifest",), lambda i, c, o, r: tag(i["manifest"], o, c)),
        "weigh": StageSpec(WeighConfig, ("manifest",), lambda i, c, o, r: weigh(i["manifest"], i.get("tags"), o, c, i.get("labels")),
                           optional=("tags", "labels")),
        "pretrain": StageSpec(TrainConfig, ("manifest",), pretrain, optional=("tags", "weights"), extra=("set",)),
        "finetune": StageSpec(TrainConfig, ("manifest",), finetune, optional=("labels",)),
        "predict": StageSpec(PredictConfig, ("model", "manifest"), lambda i, c, o, r: predict(i["model"], i["manifest"], o, c)),
        "evaluate": StageSpec(None, ("preds", "manifest"), evaluate_, optional=("labels",)),
        "ensemble": StageSpec(None, ("preds",), ensemble_, optional=("fit", "fit_labels"), extra=("weights",)),
        "pseudo-label": StageSpec(PseudoLabelConfig, ("manifest", "preds"),
                                  lambda i, c, o, r: pseudo_label(i["manifest"], i["preds"], o, c)),
        "submit": StageSpec(None, ("preds",), submit_),
    }


CHECKPOINT_KEYS = ("pretrained", "continue_from")  # options that want a checkpoint, not a folder


@dataclass
class Step:
    id: str
    stage: str
    inputs: dict[str, Any]
    options: dict[str, Any]
    refs: list[str] = field(default_factory=list)
    hash: str = ""


def load_recipe(path: str | Path) -> tuple[dict[str, Any], list[Step]]:
    recipe = load_yaml(path) if not isinstance(path, dict) else path
    unknown = set(recipe) - {"run_dir", "steps", "description", "defaults"}  # defaults: YAML anchors
    if unknown:
        raise WeblyError(f"recipe: unknown key(s) {sorted(unknown)}; valid: defaults, description, run_dir, steps")
    if not isinstance(recipe.get("steps"), list) or not recipe["steps"]:
        raise WeblyError("recipe: 'steps' must be a non-empty list")
    return recipe, validate([dict(s) for s in recipe["steps"]])


def _refs(value: Any) -> list[str]:
    if isinstance(value, str) and value.startswith("@"):
        return [value[1:]]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def validate(raw: list[dict[str, Any]]) -> list[Step]:
    specs = _specs()
    steps: list[Step] = []
    seen: set[str] = set()
    for n, s in enumerate(raw, 1):
        sid, stage = s.pop("id", None), s.pop("stage", None)
        where = f"step {n} ({sid or '?'})"
        if not sid or not isinstance(sid, str) or "/" in sid:
            raise WeblyError(f"{where}: needs an 'id' (a folder name)")
        if sid in seen:
            raise WeblyError(f"{where}: duplicate id {sid!r}")
        if stage not in specs:
            raise WeblyError(f"{where}: unknown stage {stage!r}; valid: {', '.join(specs)}")
        spec = specs[stage]
        path_keys = set(spec.inputs) | set(spec.optional) | set(spec.extra)
        inputs = {k: s.pop(k) for k in list(s) if k in path_keys}
        missing = [k for k in spec.inputs if k not in inputs]
        if missing:
            raise WeblyError(f"{where}: stage {stage} needs {', '.join(missing)}")
        refs = _refs(list(inputs.values())) + _refs(list(s.values()))
        bad = [r for r in refs if r not in seen]
        if bad:
            raise WeblyError(f"{where}: refers to {', '.join('@' + b for b in bad)}, not an earlier step")
        if spec.config is None and s:
            raise WeblyError(f"{where}: stage {stage} takes no option(s) {sorted(s)}; "
                             f"valid: {', '.join(sorted(path_keys))}")
        if spec.config is not None:
            resolve_config(spec.config, {k: v for k, v in s.items() if not _refs(v)}, where=f"{where} {stage}")
        steps.append(Step(sid, stage, inputs, s, refs))
        seen.add(sid)
    return steps


def _resolve(value: Any, key: str, outputs: dict[str, Path]) -> Any:
    if isinstance(value, list):
        return [_resolve(v, key, outputs) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        p = outputs[value[1:]]
        return str(p / "ckpt" / "last.pt") if key in CHECKPOINT_KEYS else str(p)
    return value


def _hash(step: Step, hashes: dict[str, str]) -> str:
    blob = json.dumps({"stage": step.stage, "inputs": step.inputs, "options": step.options,
                       "refs": {r: hashes[r] for r in step.refs}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan(steps: list[Step], run_dir: Path) -> list[tuple[Step, str]]:
    """(step, status): done | run | resume | rerun (changed)."""
    hashes: dict[str, str] = {}
    out = []
    for step in steps:
        step.hash = hashes[step.id] = _hash(step, hashes)
        rec = run_dir / step.id / "step.json"
        if rec.is_file():
            status = "done" if json.loads(rec.read_text()).get("hash") == step.hash else "rerun"
        elif (run_dir / step.id / "ckpt" / "last.pt").is_file():
            started = run_dir / step.id / "step.started"
            # resume only what was started with these very options; else start it over
            status = "resume" if started.is_file() and started.read_text().strip() == step.hash else "rerun"
        else:
            status = "run"
        out.append((step, status))
    return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(recipe_path: str | Path | dict, run_dir: str | Path | None = None, *, start: str | None = None,
        until: str | None = None, dry_run: bool = False, log: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    log = log or _stderr
    recipe, steps = load_recipe(recipe_path)
    root = Path(run_dir or recipe.get("run_dir") or "runs/recipe")
    ids = [s.id for s in steps]
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in ids:
            raise WeblyError(f"{name} {value!r} is not a step; steps: {', '.join(ids)}")
    first = ids.index(start) if start else 0
    last = ids.index(until) if until else len(ids) - 1
    specs = _specs()
    planned = plan(steps, root)
    outputs = {s.id: root / s.id / specs[s.stage].output if specs[s.stage].output else root / s.id for s in steps}
    summaries: dict[str, Any] = {}
    for k, (step, status) in enumerate(planned):
        if k < first or k > last:
            if k < first and status != "done" and not dry_run:
                raise WeblyError(f"--from {start}: earlier step {step.id} is not done ({status})")
            continue
        forced = start is not None and k >= first and status == "done"
        action = "run (forced by --from)" if forced else status
        log(f"[{k + 1}/{len(steps)}] {step.id} ({step.stage}): {action}")
        if dry_run or (status == "done" and not forced):
            continue
        spec = specs[step.stage]
        inputs = {key: _resolve(v, key, outputs) for key, v in step.inputs.items()}
        options = {key: _resolve(v, key, outputs) for key, v in step.options.items()}
        cfg = resolve_config(spec.config, options, where=step.id) if spec.config else None
        out = root / step.id
        if status != "resume" and out.exists():  # outputs of other options: never mixed in
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step.json").unlink(missing_ok=True)
        write_atomic(out / "step.started", step.hash + "\n")
        faults.set_scope(step.id)
        faults.point("step.start")
        t0 = time.time()
        summary = spec.run(inputs, cfg, out, status == "resume")
        summaries[step.id] = summary
        write_atomic(out / "step.json", json.dumps(
            {"id": step.id, "stage": step.stage, "hash": step.hash, "seconds": round(time.time() - t0, 2),
             "summary": summary}, indent=1, default=str) + "\n")
    return {"run_dir": str(root), "steps": len(steps), "ran": list(summaries)}
