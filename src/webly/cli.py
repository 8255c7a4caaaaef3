"""`webly` command line: one subcommand per stage, each a thin layer over library functions.

Options come from the stage's dataclass defaults, then the `--config FILE` YAML section named after
the stage, then flags (flags win). Every stage writes its resolved config (`STAGE.config.yaml`) and a
summary (`STAGE.summary.json`) into its output folder, the run directory.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from webly import __version__
from webly.config import (
    add_config_args,
    config_from_args,
    load_yaml,
    resolve_config,
    save_config,
    to_dict,
)
from webly.errors import WeblyError
from webly.files import write_atomic

# stage name -> "module:ConfigClass": what `webly config show` prints and YAML sections may hold.
# Imported only when needed, so `webly --help` and text-only stages never import torch.
STAGE_CONFIG_PATHS: dict[str, str] = {
    "synth": "webly.demo.synth:SynthConfig", "index": "webly.data.index:IndexConfig",
    "shard": "webly.data.shards:ShardConfig", "tag": "webly.labels.tagging:TagConfig",
    "weigh": "webly.labels.weighing:WeighConfig", "pretrain": "webly.training.engine:TrainConfig",
    "finetune": "webly.training.engine:TrainConfig", "predict": "webly.inference.predict:PredictConfig",
    "pseudo-label": "webly.inference.pseudolabel:PseudoLabelConfig",
}


def stage_config(name: str) -> type:
    module, cls = STAGE_CONFIG_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def stage_configs() -> dict[str, type]:
    return {name: stage_config(name) for name in STAGE_CONFIG_PATHS}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _write_run_files(run_dir: Path, stage: str, cfg: Any, summary: dict[str, Any]) -> None:
    save_config(cfg, run_dir / f"{stage}.config.yaml", stage)
    write_atomic(run_dir / f"{stage}.summary.json", json.dumps(summary, indent=1) + "\n")


def cmd_synth(args: argparse.Namespace) -> dict[str, Any]:
    from webly.demo.synth import generate

    cfg = config_from_args(stage_config("synth"), args, "synth")
    out = Path(args.out)
    t0 = time.time()
    records = generate(out, cfg)
    summary = {"root": str(out), **{s: len(r) for s, r in records.items()},
               "seconds": round(time.time() - t0, 2)}
    _write_run_files(out, "synth", cfg, summary)
    return summary


def cmd_index(args: argparse.Namespace) -> dict[str, Any]:
    from webly.data.index import index_dataset

    cfg = config_from_args(stage_config("index"), args, "index")
    summary = index_dataset(args.root, args.output, cfg)
    _write_run_files(Path(args.output).parent, "index", cfg, summary)
    return summary


def cmd_shard(args: argparse.Namespace) -> dict[str, Any]:
    from webly.data.shards import write_shards

    cfg = config_from_args(stage_config("shard"), args, "shard")
    summary = write_shards(args.manifest, args.output, cfg, log=_stderr)
    _write_run_files(Path(args.output), "shard", cfg, summary)
    return summary


def cmd_tag(args: argparse.Namespace) -> dict[str, Any]:
    from webly.labels.tagging import merge, tag

    cfg = config_from_args(stage_config("tag"), args, "tag")
    out = Path(args.output)
    # `webly tag merge -o tags/` combines the parts of a sharded run
    summary = merge(out, cfg) if args.manifest == "merge" else tag(args.manifest, out, cfg)
    name = "tag" if not cfg.shard else f"tag.shard{cfg.shard.replace('/', 'of')}"
    _write_run_files(out, name, cfg, summary)
    return summary


def cmd_weigh(args: argparse.Namespace) -> dict[str, Any]:
    from webly.labels.weighing import weigh

    cfg = config_from_args(stage_config("weigh"), args, "weigh")
    summary = weigh(args.manifest, args.tags, args.output, cfg, args.labels)
    _write_run_files(Path(args.output), "weigh", cfg, summary)
    return summary


def cmd_neighbours(args: argparse.Namespace) -> dict[str, Any]:
    from webly.data.manifest import Manifest
    from webly.data.webvision import read_synsets
    from webly.labels.weighing import nearest, resolve_concept
    from webly.labels.wordnet import wnid_of

    src = Path(args.concepts)
    if src.suffix == ".parquet":
        m = Manifest(src)
        wnids, names = m.classes, m.class_names
    else:
        from webly.data.textio import require

        wnids, names = read_synsets(require(src, "a manifest (.parquet) or a synsets.txt file"))
    q = resolve_concept(args.query)
    print(f"{args.query} -> {wnid_of(q)} {q.name()} ({args.measure})")
    for rank, (wnid, name, s) in enumerate(nearest(args.query, wnids, names, args.measure, args.top_k), 1):
        print(f"{rank:3d}  {s:.3f}  {wnid}  {name}")
    return {}


def cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from webly.data.manifest import Manifest
    from webly.training.engine import train
    from webly.training.trainsets import pretrain_data

    cfg = config_from_args(stage_config("pretrain"), args, "pretrain")
    source = args.tags if args.set == "wt" else args.weights
    if not source:
        raise WeblyError(f"--set {args.set} needs {'--tags' if args.set == 'wt' else '--weights'}")
    data = pretrain_data(Manifest(args.manifest), args.set, source)
    save_config(cfg, Path(args.output) / "pretrain.config.yaml", "pretrain")
    return train(data, cfg, args.output, task=f"pretrain_{args.set}", resume=args.resume, force=args.force)


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from webly.data.manifest import Manifest
    from webly.training.engine import train
    from webly.training.trainsets import finetune_data

    cfg = config_from_args(stage_config("finetune"), args, "finetune")
    manifest = Manifest(args.manifest)
    labels = None
    if args.labels:
        from webly.data.labels import load_labels

        labels = load_labels(args.labels, len(manifest))
    data = finetune_data(manifest, labels)
    save_config(cfg, Path(args.output) / "finetune.config.yaml", "finetune")
    return train(data, cfg, args.output, task="finetune", resume=args.resume, force=args.force)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.predict import predict

    cfg = config_from_args(stage_config("predict"), args, "predict")
    summary = predict(args.model, args.manifest, args.output, cfg)
    if summary:
        _write_run_files(Path(args.output), "predict", cfg, summary)
    return summary


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.evaluate import evaluate

    return evaluate(args.preds, args.manifest, args.output, args.labels)


def cmd_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.ensemble import ensemble

    weights = [float(x) for x in args.weights.split(",")] if args.weights else None
    fit_labels = None
    if args.fit:
        from webly.data.labels import read_name_labels as read_labels

        if not args.fit_labels:
            raise WeblyError("--fit needs --fit-labels (a 'name label' file, e.g. info/val_filelist.txt)")
        fit_labels = read_labels(args.fit_labels)
    return ensemble(args.preds, args.output, weights, args.fit.split(",") if args.fit else None,
                    fit_labels)


def cmd_pseudo_label(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.pseudolabel import pseudo_label

    cfg = config_from_args(stage_config("pseudo-label"), args, "pseudo-label")
    summary = pseudo_label(args.manifest, args.preds, args.output, cfg)
    _write_run_files(Path(args.output), "pseudo-label", cfg, summary)
    return summary


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    from webly.pipeline import run

    return run(args.recipe, args.output, start=args.start, until=args.until, dry_run=args.dry_run,
               log=_stderr)


def cmd_submit(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.evaluate import submit

    return submit(args.preds, args.output)


def cmd_wordnet(args: argparse.Namespace) -> dict[str, Any]:
    from webly.labels.wordnet import provision, synset_from_wnid

    where = provision(allow_download=not args.offline)
    out: dict[str, Any] = {"wordnet": where}
    for wnid in args.wnid:
        syn = synset_from_wnid(wnid)
        out[wnid] = ", ".join(lemma.replace("_", " ") for lemma in syn.lemma_names())
    return out


def cmd_config_show(args: argparse.Namespace) -> dict[str, Any]:
    file_cfg = load_yaml(args.config) if args.config else {}
    unknown = set(file_cfg) - set(STAGE_CONFIG_PATHS)
    if unknown:
        raise WeblyError(f"{args.config}: unknown stage(s) {sorted(unknown)}; "
                         f"valid: {sorted(STAGE_CONFIG_PATHS)}")
    stages = args.stage or list(STAGE_CONFIG_PATHS)
    resolved = {}
    for s in stages:
        if s not in STAGE_CONFIG_PATHS:
            raise WeblyError(f"unknown stage {s!r}; valid: {sorted(STAGE_CONFIG_PATHS)}")
        resolved[s] = to_dict(resolve_config(stage_config(s), file_cfg.get(s), where=s))
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return {}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from webly.demo.recipe import run_demo

    return run_demo(Path(args.out), fresh=args.fresh, seed=args.seed)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` stage's options are built (its config module imported)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="webly", description="webly: noisy web images + text -> an image classifier.",
                                formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"webly {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, fn: Callable, help_: str, cfg: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)
        sp.set_defaults(fn=fn)
        if cfg is not None:
            sp.add_argument("--config", help="YAML file with a section per stage")
            if name == selected:
                add_config_args(sp, stage_config(cfg))
        return sp

    sp = stage("demo", cmd_demo, "the built-in demo: generated data through every stage")
    sp.add_argument("--out", default="runs/demo", help="run directory")
    sp.add_argument("--seed", type=int, default=0, help="the generated world's seed (the README's table: 0, 1, 2)")
    sp.add_argument("--fresh", action="store_true", help="delete the run directory first")

    sp = stage("synth", cmd_synth, "generate a small dataset in the WebVision layout", "synth")
    sp.add_argument("out", help="dataset folder to (re)create")

    sp = stage("index", cmd_index, "read a dataset into a Parquet manifest", "index")
    sp.add_argument("root", help="dataset root (WebVision layout or class folders)")
    sp.add_argument("-o", "--output", required=True, help="manifest file to write (.parquet)")

    sp = stage("shard", cmd_shard, "write WebDataset tar shards from a manifest", "shard")
    sp.add_argument("manifest")
    sp.add_argument("-o", "--output", required=True, help="folder for the shards")

    sp = stage("tag", cmd_tag, "keywords from web text: the weakly-tagged set (WT-Set)", "tag")
    sp.add_argument("manifest", help="manifest to tag, or the word 'merge' to combine the parts "
                    "of a sharded run found in -o")
    sp.add_argument("-o", "--output", required=True, help="tags folder")

    sp = stage("weigh", cmd_weigh, "per-image label weights from WordNet similarity (LW-Set)",
               "weigh")
    sp.add_argument("manifest")
    sp.add_argument("--tags", help="tags folder written by `webly tag` (none: no keyword support)")
    sp.add_argument("--labels", help="pseudo-labels (`webly pseudo-label` output) instead of the manifest's")
    sp.add_argument("-o", "--output", required=True, help="weights folder")

    sp = stage("neighbours", cmd_neighbours, "the dataset concepts most similar to a concept")
    sp.add_argument("query", help="a wnid (n01568892), a synset (lion.n.01) or a noun ('yellow warbler')")
    sp.add_argument("--concepts", required=True, help="manifest (.parquet) or synsets.txt")
    sp.add_argument("--measure", default="wup", choices=["wup", "path", "lch"])
    sp.add_argument("--top-k", type=int, default=10)

    sp = stage("pretrain", cmd_pretrain, "pretrain a backbone on the WT-Set or LW-Set", "pretrain")
    sp.add_argument("manifest")
    sp.add_argument("--set", required=True, choices=["wt", "lw"], help="weakly-tagged or label-weighted set")
    sp.add_argument("--tags", help="tags folder (--set wt)")
    sp.add_argument("--weights", help="weights folder (--set lw)")
    sp.add_argument("-o", "--output", required=True, help="run directory")
    sp.add_argument("--resume", action="store_true", help="continue from RUN/ckpt/last.pt")
    sp.add_argument("--force", action="store_true", help="resume even if the checkpoint's config is incompatible")

    sp = stage("finetune", cmd_finetune, "train on the target classes (from a pretrained checkpoint)",
               "finetune")
    sp.add_argument("manifest")
    sp.add_argument("--labels", help="labels.parquet from `webly pseudo-label` instead of the manifest's")
    sp.add_argument("-o", "--output", required=True, help="run directory")
    sp.add_argument("--resume", action="store_true", help="continue from RUN/ckpt/last.pt")
    sp.add_argument("--force", action="store_true", help="resume even if the checkpoint's config is incompatible")

    sp = stage("predict", cmd_predict, "batched inference over a manifest split", "predict")
    sp.add_argument("model", help="run directory with model.safetensors + model.json")
    sp.add_argument("manifest")
    sp.add_argument("-o", "--output", required=True, help="predictions folder")

    sp = stage("evaluate", cmd_evaluate, "top-1/top-5, plain and class-balanced, per class")
    sp.add_argument("preds", help="predictions folder")
    sp.add_argument("--manifest", required=True, help="manifest (class names; labels of the split)")
    sp.add_argument("--labels", help="'name label' file instead of the manifest's labels")
    sp.add_argument("-o", "--output", help="where metrics.json and plots go (default: PREDS)")

    sp = stage("ensemble", cmd_ensemble, "average several models' predictions (weights optional or fitted)")
    sp.add_argument("preds", nargs="+", help="predictions folders of the same images")
    sp.add_argument("-o", "--output", required=True, help="predictions folder for the ensemble")
    sp.add_argument("--weights", help="comma-separated weights, one per model")
    sp.add_argument("--fit", help="comma-separated validation predictions folders (same models, same order)")
    sp.add_argument("--fit-labels", help="'name label' file for --fit")

    sp = stage("pseudo-label", cmd_pseudo_label, "relabel confident training images (labels.parquet)",
               "pseudo-label")
    sp.add_argument("manifest")
    sp.add_argument("preds", help="predictions on the train split (one model or an ensemble)")
    sp.add_argument("-o", "--output", required=True, help="folder for labels.parquet and the report")

    sp = stage("run", cmd_run, "run a recipe's steps in order, skipping finished ones, resuming the rest")
    sp.add_argument("recipe", help="recipe YAML (see webly.pipeline)")
    sp.add_argument("-o", "--output", help="run directory (default: the recipe's run_dir)")
    sp.add_argument("--from", dest="start", help="(re)run from this step on")
    sp.add_argument("--until", help="stop after this step")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")

    sp = stage("submit", cmd_submit, "write the WebVision submission file from test predictions")
    sp.add_argument("preds", help="predictions folder (test split, top-5)")
    sp.add_argument("-o", "--output", required=True, help="submission file to write")

    sp = stage("wordnet", cmd_wordnet, "make WordNet 3.0 usable by NLTK offline; look up wnids")
    sp.add_argument("wnid", nargs="*", help="WordNet ids to print, e.g. n02432511")
    sp.add_argument("--offline", action="store_true", help="never try nltk.download")

    cp = sub.add_parser("config", help="show resolved stage configs", formatter_class=fmt)
    csub = cp.add_subparsers(dest="config_command", required=True)
    sp = csub.add_parser("show", help="print defaults <- --config file, as YAML", formatter_class=fmt)
    sp.add_argument("stage", nargs="*", help=f"stages to show (default all: {', '.join(STAGE_CONFIG_PATHS)})")
    sp.add_argument("--config", help="YAML file with a section per stage")
    sp.set_defaults(fn=cmd_config_show)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    try:
        result = args.fn(args)
    except WeblyError as e:
        print(f"webly {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only or vanished output: say so in one line
        if e.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise
        print(f"webly {args.command}: error: {e.strerror}: {e.filename or ''} (outputs written before "
              "this are intact; free space or fix the folder, then rerun or --resume)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"webly {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:  # under torchrun: leave the process group cleanly (NCCL warns otherwise)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
