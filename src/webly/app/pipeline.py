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

Decisions: a step with `when: "@GATE"` (a `gate` step: a decision made on the holdout, see
`webly.inference.gate`) runs only when the gate passed, `when: "not @GATE"` only when it did not.
A skipped step records why in its step.json; a step that needs a skipped step's output is skipped
too, and a list of inputs (an ensemble's members) loses only the skipped ones.
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

from webly.app.launch import Launch, launch_stage, wait_for
from webly.app.stages import BY_NAME, load, run_stage
from webly.core import decisions, faults
from webly.core.config import load_yaml, resolve_config
from webly.core.errors import WeblyError
from webly.core.files import write_atomic

CHECKPOINT_KEYS = ("pretrained", "continue_from")  # options that want a checkpoint, not a folder


@dataclass
class Step:
    id: str
    stage: str
    inputs: dict[str, Any]
    options: dict[str, Any]
    refs: list[str] = field(default_factory=list)
    hash: str = ""
    when: str = ""  # "@gate" or "not @gate": run only when the gate step passed (or did not)


def load_recipe(path: str | Path) -> tuple[dict[str, Any], list[Step]]:
    recipe = load_yaml(path) if not isinstance(path, dict) else path
    unknown = set(recipe) - {"run_dir", "steps", "description",
                             "defaults"}  # defaults: YAML anchors
    if unknown:
        raise WeblyError(f"recipe: unknown key(s) {sorted(unknown)}; valid: defaults, description, "
                         "run_dir, steps")
    if not isinstance(recipe.get("steps"), list) or not recipe["steps"]:
        raise WeblyError("recipe: 'steps' must be a non-empty list")
    return recipe, validate([dict(s) for s in recipe["steps"]])


def _refs(value: Any) -> list[str]:
    if isinstance(value, str) and value.startswith("@"):
        return [value[1:]]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _warn(message: str) -> None:
    print(f"webly: {message}", file=sys.stderr, flush=True)


def validate(raw: list[dict[str, Any]]) -> list[Step]:
    steps: list[Step] = []
    seen: set[str] = set()
    gates: set[str] = set()
    for n, s in enumerate(raw, 1):
        sid, name = s.pop("id", None), s.pop("stage", None)
        when = s.pop("when", "")
        where = f"step {n} ({sid or '?'})"
        if not sid or not isinstance(sid, str) or "/" in sid:
            raise WeblyError(f"{where}: needs an 'id' (a folder name)")
        if sid in seen:
            raise WeblyError(f"{where}: duplicate id {sid!r}")
        if name not in BY_NAME:
            raise WeblyError(f"{where}: unknown stage {name!r}; valid: {', '.join(BY_NAME)}")
        st = BY_NAME[name]
        for old, new in st.renamed:
            if old in s:
                _warn(f"{where}: {name} option {old!r} is now {new!r}; please rename it")
                s[new] = s.pop(old)
        names = {i.name for i in st.inputs}
        inputs = {k: s.pop(k) for k in list(s) if k in names}
        missing = [i.name for i in st.inputs if i.required and i.name not in inputs]
        if missing:
            raise WeblyError(f"{where}: stage {name} needs {', '.join(missing)}")
        refs = _refs(list(inputs.values())) + _refs(list(s.values()))
        bad = [r for r in refs if r not in seen]
        if bad:
            raise WeblyError(f"{where}: refers to {', '.join('@' + b for b in bad)}, not an "
                             "earlier step")
        resolve_config(load(st.config), {k: v for k, v in s.items() if not _refs(v)},
                       where=f"{where} {name}")
        if when:
            gate = _gate_of(when, where)
            if gate not in gates:
                raise WeblyError(f"{where}: when {when!r}: {gate!r} is not an earlier gate step")
            refs = [*refs, gate]
        steps.append(Step(sid, name, inputs, s, refs, when=when))
        if name == "gate":
            gates.add(sid)
        seen.add(sid)
    return steps


def _gate_of(when: Any, where: str) -> str:
    """'@gate' or 'not @gate' -> 'gate'."""
    text = when.strip() if isinstance(when, str) else ""
    name = text.removeprefix("not ").strip()
    if not name.startswith("@") or len(name) < 2:
        raise WeblyError(f"{where}: when takes '@GATE' or 'not @GATE' (a gate step), got {when!r}")
    return name[1:]


def skip_reason(step: Step, root: Path, skipped: dict[str, str]) -> str:
    """Why `step` does not run ('' when it runs): its gate decided so, or a step it needs was
    skipped (a list of inputs, such as an ensemble's members, only loses the skipped ones)."""
    if step.when:
        gate = _gate_of(step.when, step.id)
        if gate in skipped:
            return f"its gate {gate} was skipped"
        passed = decisions.read(root / gate).changed
        if passed == step.when.strip().startswith("not "):
            return f"gate {gate} {'passed' if passed else 'did not pass'} (when: {step.when})"
    for value in [*step.inputs.values(), *step.options.values()]:
        if isinstance(value, str) and value[1:] in skipped and value.startswith("@"):
            return f"it needs {value}, which was skipped"
        refs = _refs(value) if isinstance(value, list) else []  # a list of numbers has none
        if refs and all(r in skipped for r in refs):
            return f"every one of {value} was skipped"
    return ""


def _drop_skipped(value: Any, skipped: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [v for v in value if not (isinstance(v, str) and v.startswith("@")
                                         and v[1:] in skipped)]
    return value


def _resolve(value: Any, key: str, outputs: dict[str, Path]) -> Any:
    if isinstance(value, list):
        return [_resolve(v, key, outputs) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        p = outputs[value[1:]]
        return str(p / "ckpt" / "last.pt") if key in CHECKPOINT_KEYS else str(p)
    return value


def _record_skip(step: Step, root: Path, why: str) -> None:
    """A skipped step leaves only its step.json (what an earlier run left there is removed)."""
    out = root / step.id
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_atomic(out / "step.json", json.dumps({"id": step.id, "stage": step.stage,
                                                "hash": step.hash, "skipped": why}) + "\n")


def _run_step(step: Step, status: str, root: Path, outputs: dict[str, Path],
              launch: Launch, skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """One step into root/step.id; node 0 writes step.json last. Other nodes join launched steps
    and wait for the rest."""
    st = BY_NAME[step.stage]
    skipped = skipped or {}
    inputs = {key: _resolve(_drop_skipped(v, skipped), key, outputs)
              for key, v in step.inputs.items()}
    options = {key: _resolve(_drop_skipped(v, skipped), key, outputs)
               for key, v in step.options.items()}
    cfg = resolve_config(load(st.config), options, where=step.id)
    out = root / step.id
    if launch.node_rank > 0:
        if launch.launches(st.name):
            launch_stage(st, inputs, cfg, outputs[step.id], launch, resume=status == "resume")
        wait_for(out / "step.json", step.hash)
        return {}
    if status != "resume" and out.exists():  # outputs of other options: never mixed in
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").unlink(missing_ok=True)
    write_atomic(out / "step.started", step.hash + "\n")
    faults.set_scope(step.id)
    faults.point("step.start")
    t0 = time.time()
    if launch.launches(st.name):
        summary = launch_stage(st, inputs, cfg, outputs[step.id], launch, status == "resume")
    else:
        summary = run_stage(st, inputs, cfg, outputs[step.id], resume=status == "resume")
    write_atomic(out / "step.json", json.dumps(
        {"id": step.id, "stage": step.stage, "hash": step.hash,
         "seconds": round(time.time() - t0, 2), "summary": summary}, indent=1, default=str) + "\n")
    return summary


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
            same = started.is_file() and started.read_text().strip() == step.hash
            status = "resume" if same else "rerun"
        else:
            status = "run"
        out.append((step, status))
    return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(recipe_path: str | Path | dict, run_dir: str | Path | None = None, *,
        start: str | None = None, until: str | None = None, dry_run: bool = False,
        log: Callable[[str], None] | None = None, launch: Launch | None = None) -> dict[str, Any]:
    """Run the recipe's steps in order (see the module docstring); with `launch`, training and
    prediction steps go through torchrun (`webly.app.launch`)."""
    log = log or _stderr
    recipe, steps = load_recipe(recipe_path)
    root = Path(run_dir or recipe.get("run_dir") or "runs/recipe")
    ids = [s.id for s in steps]
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in ids:
            raise WeblyError(f"{name} {value!r} is not a step; steps: {', '.join(ids)}")
    first = ids.index(start) if start else 0
    last = ids.index(until) if until else len(ids) - 1
    planned = plan(steps, root)
    outputs = {s.id: root / s.id / BY_NAME[s.stage].output_file for s in steps}
    summaries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for k, (step, status) in enumerate(planned):
        head = f"[{k + 1}/{len(steps)}] {step.id} ({step.stage})"
        if status == "done":
            why = json.loads((root / step.id / "step.json").read_text()).get("skipped")
            if why:
                skipped[step.id] = why
                if first <= k <= last:
                    log(f"{head}: skipped earlier: {why}")
                continue
        if k < first or k > last:
            if k < first and status != "done" and not dry_run:
                raise WeblyError(f"--from {start}: earlier step {step.id} is not done ({status})")
            continue
        if not dry_run and (why := skip_reason(step, root, skipped)):
            skipped[step.id] = why
            log(f"{head}: skipped: {why}")
            if not (launch and launch.node_rank > 0):  # node 0 writes the shared folder
                _record_skip(step, root, why)
            continue
        forced = start is not None and k >= first and status == "done"
        action = "run (forced by --from)" if forced else status
        log(f"{head}: {action}" + (f" (when {step.when})" if dry_run and step.when else ""))
        if dry_run or (status == "done" and not forced):
            continue
        summaries[step.id] = _run_step(step, status, root, outputs, launch or Launch(), skipped)
    return {"run_dir": str(root), "steps": len(steps), "ran": list(summaries),
            **({"skipped": skipped} if skipped else {})}
