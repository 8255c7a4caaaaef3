"""`webly` command line: one subcommand per stage, derived from the stage records
(`webly.app.stages`),
plus the commands `run`, `demo`, `report`, `classify`, `export`, `neighbours`, `wordnet` and
`config show`.

Options come from the stage's dataclass defaults, then the `--config FILE` YAML section named after
the stage, then flags (flags win). Every stage writes its resolved config (`STAGE.config.yaml`) and
a
summary (`STAGE.summary.json`) beside its outputs. Only the chosen stage's config module is
imported, so `webly --help` and the text stages start without torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from webly import __version__
from webly.app.stages import STAGES, Stage, config_class, run_stage, stage
from webly.core.config import add_config_args, config_from_args, load_yaml, resolve_config, to_dict
from webly.core.errors import WeblyError

FMT = argparse.ArgumentDefaultsHelpFormatter


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def stage_configs() -> dict[str, type]:
    """Every stage's config class (imports them all: for `config show` and tests, not for
    --help)."""
    return {st.name: config_class(st.name) for st in STAGES}


def _paths(value: Any) -> Any:
    """`--fit a,b` and `--fit a b` alike: lists of paths may also be comma-separated."""
    if isinstance(value, list):
        return [p for v in value for p in str(v).split(",") if p]
    return value


def cmd_stage(args: argparse.Namespace) -> dict[str, Any]:
    st = stage(args.command)
    cfg = config_from_args(config_class(st.name), args, st.name)
    given = [i.name for i in st.inputs if getattr(args, i.name, None) is not None]
    inputs = {name: _paths(getattr(args, name)) for name in given}
    out = args.output or getattr(args, st.default_output)
    return run_stage(st, inputs, cfg, Path(out), resume=getattr(args, "resume", False),
                     force=getattr(args, "force", False))


class _Renamed(argparse.Action):
    """A flag that was renamed: still accepted, with a warning naming the new one."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        new = "--" + self.dest.replace("_", "-")
        print(f"webly: {option_string} is now {new}; please use the new name", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_stage_parser(sub: Any, st: Stage, selected: str | None) -> None:
    sp = sub.add_parser(st.name, help=st.help, formatter_class=FMT,
                        description=f"{st.help}. Reads: {st.reads}. Writes: {st.writes}.")
    sp.set_defaults(fn=cmd_stage)
    for i in st.inputs:
        kw: dict[str, Any] = {"help": i.help, **({"choices": list(i.choices)} if i.choices else {})}
        if i.positional:
            sp.add_argument(i.name, nargs="+" if i.many else None, **kw)
        else:
            sp.add_argument("--" + i.name.replace("_", "-"), dest=i.name, required=i.required,
                            nargs="+" if i.many else None, **kw)
    what = f"file to write ({st.output_file} in a recipe)" if st.output_file else "output folder"
    sp.add_argument("-o", "--output", required=not st.default_output,
                    help=what + (f" (default: the {st.default_output.upper()} folder)"
                                 if st.default_output else ""))
    if st.training:
        sp.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/last.pt")
        sp.add_argument("--force", action="store_true",
                        help="resume even if the checkpoint's config is incompatible")
    for old, new in st.renamed:
        sp.add_argument("--" + old.replace("_", "-"), dest=new, action=_Renamed,
                        default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    sp.add_argument("--config", help="YAML file with a section per stage")
    if st.name == selected:
        add_config_args(sp, config_class(st.name))


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
    for rank, (wnid, name, s) in enumerate(nearest(args.query, wnids, names, args.measure,
                                                   args.top_k), 1):
        print(f"{rank:3d}  {s:.3f}  {wnid}  {name}")
    return {}


def _own_out(args: argparse.Namespace) -> str:
    return args.output or f"runs/{Path(args.data).resolve().name or 'own'}"


def _own_start_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--pretrained", help="with --data: finetune from these weights instead of "
                    "training from scratch: a timm model name (resnet18.a1_in1k: fetched once "
                    "through timm's hub support) or a local .safetensors / state dict file")
    sp.add_argument("--backbone", help="with --data --pretrained FILE: the file's architecture "
                    "(a timm model name)")


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    from webly.app.launch import Launch
    from webly.app.pipeline import run

    if bool(args.recipe) == bool(args.data):
        raise WeblyError("webly run takes a recipe or --data DIR (your own data), one of them")
    if args.data:
        from webly.app.own import run_own

        return run_own(args.data, _own_out(args), args.budget, dry_run=args.dry_run,
                       pretrained=args.pretrained, backbone=args.backbone)
    if args.budget or args.pretrained or args.backbone:
        raise WeblyError("--budget, --pretrained and --backbone plan your own data: webly run "
                         "--data DIR --budget 30m [--pretrained resnet18.a1_in1k]")
    launch = Launch(args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr,
                    args.master_port)
    return run(args.recipe, args.output, start=args.start, until=args.until, dry_run=args.dry_run,
               log=_stderr, launch=launch)


def cmd_plan(args: argparse.Namespace) -> dict[str, Any]:
    from webly.app.plan import WEBVISION2, plan, table_text

    if bool(args.recipe) == bool(args.data):
        raise WeblyError("webly plan takes a recipe or --data DIR (your own data), one of them")
    if args.data:
        from webly.app.own import run_own

        return run_own(args.data, _own_out(args), args.budget, dry_run=True,
                       pretrained=args.pretrained, backbone=args.backbone)
    images = dict(WEBVISION2)
    for part in (args.images or "").split(","):
        if part:
            split, _, n = part.partition("=")
            if split not in images or not n.isdigit():
                raise WeblyError("--images takes split=count[,...] with train, val, test; "
                                 f"got {part!r}")
            images[split] = int(n)
    rows, source = plan(args.recipe, images, args.throughput)
    print(table_text(rows, source, images))
    return {}


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
    names = [st.name for st in STAGES]
    unknown = set(file_cfg) - set(names)
    if unknown:
        raise WeblyError(f"{args.config}: unknown stage(s) {sorted(unknown)}; "
                         f"valid: {sorted(names)}")
    stages = args.stage or names
    resolved = {}
    for s in stages:
        resolved[s] = to_dict(resolve_config(config_class(s), file_cfg.get(s), where=s))
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return {}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from webly.app.demo.recipe import run_demo

    run_demo(Path(args.out), fresh=args.fresh, seed=args.seed)  # prints its own table
    return {}


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from webly.app.report import write_report

    result = write_report(Path(args.run))
    print(f"report: {Path(result['report']).resolve()}", file=sys.stderr)
    return {k: v for k, v in result.items() if k != "ablation"}


def cmd_classify(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.classify import ClassifyConfig, classify

    cfg = ClassifyConfig(top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                         tta=args.tta, device=args.device)
    result = classify(args.model, args.inputs, args.output, cfg, list_file=args.list)
    print(f"classified {result['classified']} images into {args.output}; skipped "
          f"{result['skipped']} (listed in {result['skipped_list']})", file=sys.stderr)
    return result


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from webly.inference.export import export

    return export(args.model, args.format, args.output)


def _add_after_training(sub: Any) -> None:
    """`classify` and `export`: what a user does with a trained model."""
    sp = sub.add_parser("classify", help="classify image files, folders (recursively) or a list "
                                         "of paths with a trained model: CSV or JSONL of top-k "
                                         "classes; unreadable files skipped and listed",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_classify)
    sp.add_argument("model", help="a training run folder (model.safetensors + model.json)")
    sp.add_argument("inputs", nargs="*", help="image files and folders")
    sp.add_argument("--list", help="a file of image paths, one a line")
    sp.add_argument("-o", "--output", default="classified.csv",
                    help="CSV (path, class_1, prob_1, ...) or, ending in .jsonl, JSON lines; the "
                         "skipped files go to OUTPUT.skipped.tsv")
    sp.add_argument("--top-k", type=int, default=5, help="classes written per image")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int, default=2, help="processes decoding images")
    sp.add_argument("--tta", default="center",
                    choices=["center", "flip", "flip_shift", "multiscale"],
                    help="test-time augmentation, as predict's")
    sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    sp = sub.add_parser("export", help="a trained model as ONNX or TorchScript, with its "
                                       "preprocessing and class names in FILE.json",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_export)
    sp.add_argument("model", help="a training run folder (model.safetensors + model.json)")
    sp.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    sp.add_argument("-o", "--output", required=True, help="the exported file (.onnx, .pt)")


def add_commands(sub: Any) -> None:
    """The commands that are not stages."""
    _add_after_training(sub)
    sp = sub.add_parser("report", help="report.html / report.md for a run folder: results, "
                                       "examples with text, keywords and labels, keyword audit",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_report)
    sp.add_argument("run", help="run folder (a recipe's, the demo's or a benchmark's)")

    sp = sub.add_parser("demo", help="the built-in demo: generated data through every stage",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_demo)
    sp.add_argument("--out", default="runs/demo", help="run directory")
    sp.add_argument("--seed", type=int, default=0,
                    help="the generated world's seed (the README's table: 0, 1, 2)")
    sp.add_argument("--fresh", action="store_true", help="delete the run directory first")

    sp = sub.add_parser("run",
                        help="run a recipe's steps in order, skipping finished ones, resuming the "
                             "rest",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_run)
    sp.add_argument("recipe", nargs="?", help="recipe YAML (see webly.app.pipeline)")
    sp.add_argument("--data", help="your own data instead of a recipe: class folders (optional "
                    "text.jsonl/text.csv sidecar) or a WebVision tree; the recipe is sized from "
                    "it (webly.app.own)")
    sp.add_argument("--budget", help="with --data: the whole run's time, e.g. 30m, 1h30m "
                    "(epochs and image size chosen to fit, from a measured training rate)")
    sp.add_argument("-o", "--output", help="run directory (default: the recipe's run_dir; with "
                    "--data, runs/<data folder name>)")
    _own_start_options(sp)
    sp.add_argument("--from", dest="start", help="(re)run from this step on")
    sp.add_argument("--until", help="stop after this step")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    sp.add_argument("--nproc-per-node", type=int, default=1,
                    help="GPUs per node: training and prediction steps run under torchrun")
    sp.add_argument("--nnodes", type=int, default=1, help="nodes sharing the run folder")
    sp.add_argument("--node-rank", type=int, default=0,
                    help="this node (0 runs the other steps; the rest join and wait)")
    sp.add_argument("--master-addr", default="127.0.0.1", help="node 0's address")
    sp.add_argument("--master-port", type=int, default=29500, help="torchrun's port on node 0")

    sp = sub.add_parser("plan", help="what a recipe costs: image passes and GPU-hours per step",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_plan)
    sp.add_argument("recipe", nargs="?", help="recipe YAML")
    sp.add_argument("--data", help="plan your own data instead (see webly run --data): index, "
                    "measure, print the plan, train nothing")
    sp.add_argument("--budget", help="with --data: the whole run's time, e.g. 30m")
    sp.add_argument("-o", "--output", help="with --data: run directory (default: "
                    "runs/<data folder name>)")
    _own_start_options(sp)
    sp.add_argument("--images", help="images per split, e.g. train=16000000,val=250000 "
                    "(default: WebVision 2.0's)")
    sp.add_argument("--throughput", help="measured rates, JSON {\"backbone@size\": img_s} "
                    "(default: timm's published RTX 3090 AMP rates)")

    sp = sub.add_parser("neighbours", help="the dataset concepts most similar to a concept",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_neighbours)
    sp.add_argument("query",
                    help="a wnid (n01568892), a synset (lion.n.01) or a noun ('yellow warbler')")
    sp.add_argument("--concepts", required=True, help="manifest (.parquet) or synsets.txt")
    sp.add_argument("--measure", default="wup", choices=["wup", "path", "lch"])
    sp.add_argument("--top-k", type=int, default=10)

    sp = sub.add_parser("wordnet", help="make WordNet 3.0 usable by NLTK offline; look up wnids",
                        formatter_class=FMT)
    sp.set_defaults(fn=cmd_wordnet)
    sp.add_argument("wnid", nargs="*", help="WordNet ids to print, e.g. n02432511")
    sp.add_argument("--offline", action="store_true", help="never try nltk.download")

    cp = sub.add_parser("config", help="show resolved stage configs", formatter_class=FMT)
    csub = cp.add_subparsers(dest="config_command", required=True)
    sp = csub.add_parser("show", help="print defaults <- --config file, as YAML",
                         formatter_class=FMT)
    sp.add_argument("stage", nargs="*",
                    help=f"stages to show (default all: {', '.join(st.name for st in STAGES)})")
    sp.add_argument("--config", help="YAML file with a section per stage")
    sp.set_defaults(fn=cmd_config_show)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` stage's options are built (its config module imported)."""
    p = argparse.ArgumentParser(prog="webly",
                                description="webly: noisy web images + text -> a classifier.",
                                formatter_class=FMT)
    p.add_argument("--version", action="version", version=f"webly {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")
    add_commands(sub)
    for st in STAGES:
        add_stage_parser(sub, st, selected)
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
        print(f"webly {args.command}: error: {e.strerror}: {e.filename or ''} (outputs written "
              "before "
              "this are intact; free space or fix the folder, then rerun or --resume)",
              file=sys.stderr)
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
