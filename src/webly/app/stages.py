"""The stages of the method, each declared once.

A stage is what `webly run` can run as a step and what `webly STAGE` runs by hand: it reads files,
writes files into one output, and is configured by one dataclass. Everything else is derived from
the records below: the CLI subcommand and its flags (`webly.app.cli`), the recipe step kind and its
validation (`webly.app.pipeline`), the config sections a YAML file may hold, and the README's
table of
stages (checked by a test). Functions and config classes are named as "module:attribute" and
imported only when the stage runs, so `webly --help` and the text stages start without torch.

A stage function takes its inputs, `cfg` and `out` as keywords (plus `resume` and `force` for
training) and returns a summary dict; `run_stage` writes `STAGE.config.yaml` and
`STAGE.summary.json` beside the outputs.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webly.core.config import save_config
from webly.core.errors import WeblyError
from webly.core.files import write_atomic


@dataclass(frozen=True)
class Input:
    """A file or folder a stage reads (or a plain value that is not a config option)."""

    name: str
    help: str
    required: bool = True
    positional: bool = False
    many: bool = False  # several paths (nargs="+")
    path: bool = True  # False: a plain value (pretrain's set), never an @reference
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    config: str  # "module:Class": the stage's options
    function: str  # "module:function"
    inputs: tuple[Input, ...]
    reads: str  # for the README's table
    writes: str
    output: str = "folder"  # what -o names: "folder", or the file name a recipe step writes
    default_output: str = ""  # an input whose path -o defaults to (evaluate writes beside PREDS)
    training: bool = False  # takes --resume / --force
    renamed: tuple[tuple[str, str], ...] = ()  # (old, new) keys still accepted, with a warning

    @property
    def output_file(self) -> str:
        return "" if self.output == "folder" else self.output


def _in(name: str, help_: str, **kw: Any) -> Input:
    return Input(name, help_, **kw)


MANIFEST = _in("manifest", "manifest (.parquet) written by `webly index`", positional=True)
PREDS = _in("preds", "predictions folder written by `webly predict` or `webly ensemble`",
            positional=True)

STAGES: tuple[Stage, ...] = (
    Stage("synth", "generate a small dataset in the WebVision layout",
          "webly.app.demo.synth:SynthConfig",
          "webly.app.demo.synth:run_synth", (), "—",
          "a WebVision-layout dataset with images, web text, label noise, and `truth/`"),
    Stage("index", "read a dataset into a Parquet manifest", "webly.data.index:IndexConfig",
          "webly.data.index:run_index",
          (_in("root", "dataset root (WebVision layout or class folders), or the word 'merge' to "
                       "write the manifest from the parts of a sharded run", positional=True),),
          "WebVision 1.0/2.0 tree or class folders", "the manifest", output="manifest.parquet"),
    Stage("shard", "write WebDataset tar shards from a manifest", "webly.data.shards:ShardConfig",
          "webly.data.shards:run_shard", (MANIFEST,), "manifest + images",
          "WebDataset tar shards + `shards-SPLIT.json`"),
    Stage("tag", "keywords from web text: the weakly-tagged set (WT-Set)",
          "webly.labels.tagging:TagConfig",
          "webly.labels.tagging:run_tag",
          (_in("manifest", "manifest to tag, or the word 'merge' to combine the parts of a sharded "
                           "run found in -o", positional=True),),
          "manifest text", "WT-Set: `vocab.tsv`, `keywords.npz`, `stats.json`, plots"),
    Stage("weigh", "per-image label weights from WordNet similarity (LW-Set)",
          "webly.labels.weighing:WeighConfig", "webly.labels.weighing:run_weigh",
          (MANIFEST, _in("tags", "tags folder written by `webly tag` (none: no keyword support)",
                         required=False),
           _in("labels", "pseudo-labels (`webly pseudo-label` output) instead of the manifest's",
               required=False)),
          "manifest, WT-Set", "LW-Set: `label_weights.npz`, `neighbours.tsv`, `stats.json`"),
    Stage("pretrain", "pretrain a backbone on the WT-Set or LW-Set",
          "webly.training.config:TrainConfig",
          "webly.training.run:run_pretrain",
          (MANIFEST, _in("set", "weakly-tagged (wt) or label-weighted (lw) set", path=False,
                         choices=("wt", "lw")),
           _in("tags", "tags folder (--set wt)", required=False),
           _in("label_weights", "label weights folder from `webly weigh` (--set lw)",
               required=False)),
          "manifest, WT-Set or LW-Set",
          "a pretrained backbone: checkpoints, `model.safetensors`, curves",
          training=True, renamed=(("weights", "label_weights"),)),
    Stage("finetune", "train on the target classes (from a pretrained checkpoint)",
          "webly.training.config:TrainConfig", "webly.training.run:run_finetune",
          (MANIFEST, _in("labels",
                         "labels.parquet from `webly pseudo-label` instead of the manifest's",
                         required=False)),
          "manifest (+ a pretrained checkpoint, pseudo-labels)",
          "the classifier: checkpoints, `model.safetensors`, curves", training=True),
    Stage("predict", "batched inference over a manifest split",
          "webly.inference.predict:PredictConfig",
          "webly.inference.predict:run_predict",
          (_in("model", "run directory with model.safetensors + model.json", positional=True),
           MANIFEST),
          "a trained model + manifest", "top-k classes + leftover mass per image"),
    Stage("evaluate", "top-1/top-5, plain and class-balanced, per class",
          "webly.inference.evaluate:EvaluateConfig", "webly.inference.evaluate:run_evaluate",
          (PREDS, _in("manifest", "manifest (class names; labels of the split)"),
           _in("labels", "'name label' file instead of the manifest's labels", required=False)),
          "predictions + manifest", "`metrics.json`, `per_class.tsv`, plots",
          default_output="preds"),
    Stage("ensemble", "average several models' predictions (weights equal, given or fitted)",
          "webly.inference.ensemble:EnsembleConfig", "webly.inference.ensemble:run_ensemble",
          (_in("preds", "predictions folders of the same images", positional=True, many=True),
           _in("fit",
               "validation predictions folders of the same models, in the same order, to fit "
                      "the weights on", required=False, many=True),
           _in("fit_labels", "'name label' file for --fit, or a manifest (its labels)",
               required=False)),
          "predictions", "averaged predictions", renamed=(("weights", "model_weights"),)),
    Stage("pseudo-label", "relabel confident training images (labels.parquet)",
          "webly.inference.pseudolabel:PseudoLabelConfig",
          "webly.inference.pseudolabel:run_pseudo_label",
          (MANIFEST, _in("preds", "predictions on the train split (one model or an ensemble)",
                         positional=True),
           _in("text", "tags folder from `webly tag`: the text's evidence joins the images' "
                       "(out-of-fold keyword classifier)", required=False),
           _in("probe", "with --thresholds: one model's predictions with features "
                        "(`predict --features`) on the train split, then on the holdout",
               required=False, many=True)),
          "train predictions (+ WT-Set)",
          "`labels.parquet` for `finetune --labels`, `scores.parquet`, report, suspects"),
    Stage("gate", "a decision made on the holdout (a recipe step `when: \"@GATE\"` runs only "
                  "when it passed)",
          "webly.inference.gate:GateConfig", "webly.inference.gate:run_gate",
          (_in("model", "memorised: a training run folder (its holdout curve)", required=False),
           _in("preds", "beats: holdout predictions of the baseline, then the candidate",
               required=False, many=True),
           _in("labels", "beats: a manifest or a 'name label' file", required=False)),
          "a training run, or holdout predictions", "`decision.json`: the choice, why, the scores"),
    Stage("submit", "write the WebVision submission file from test predictions",
          "webly.inference.evaluate:SubmitConfig", "webly.inference.evaluate:run_submit", (PREDS,),
          "test predictions", "the WebVision submission file", output="predictions.txt"),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise WeblyError(f"unknown stage {name!r}; valid: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def load(ref: str) -> Any:
    """'module:attribute' -> the attribute (imports the module)."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def config_class(name: str) -> type:
    return load(stage(name).config)


def run_files_name(st: Stage, cfg: Any) -> str:
    """`tag` run with --shard 0/4 writes tag.shard0of4.*, so machines sharing a folder never
    clash."""
    shard = getattr(cfg, "shard", None)
    return f"{st.name}.shard{shard.replace('/', 'of')}" if isinstance(shard,
                                                                      str) and shard else st.name


def run_stage(st: Stage, inputs: dict[str, Any], cfg: Any, out: Path, *, resume: bool = False,
              force: bool = False) -> dict[str, Any]:
    """Run one stage; write its resolved config and summary beside its outputs (rank 0 only)."""
    extra = {"resume": resume, "force": force} if st.training else {}
    summary = load(st.function)(**inputs, cfg=cfg, out=Path(out), **extra) or {}
    folder = Path(out).parent if st.output_file else Path(out)
    if summary and os.environ.get("RANK", "0") == "0":
        name = run_files_name(st, cfg)
        save_config(cfg, folder / f"{name}.config.yaml", st.name)
        text = json.dumps(summary, indent=1, default=str) + "\n"
        write_atomic(folder / f"{name}.summary.json", text)
    return summary


def usage(st: Stage) -> str:
    """`webly predict MODEL MANIFEST -o OUT`: the command line a user types, for the README."""
    words = [f"webly {st.name}"]
    for i in st.inputs:
        flag = f"--{i.name.replace('_', '-')} {i.name.upper()}"
        if i.positional:
            words.append(i.name.upper() + (" ..." if i.many else ""))
        else:
            words.append(flag if i.required else f"[{flag}]")
    out = "-o FILE" if st.output_file else "-o OUT"
    words.append(f"[{out}]" if st.default_output else out)
    return " ".join(words)


def markdown_rows() -> list[str]:
    """The README's table rows: command, what it reads, what it writes."""
    return [f"| `{usage(s)}` | {s.reads} | {s.writes} |" for s in STAGES]
