from dataclasses import dataclass

import pytest
import yaml

from webly.app.cli import main
from webly.core.config import opt, resolve_config
from webly.core.errors import WeblyError


@dataclass
class Toy:
    size: int = opt(4, "a size")
    rate: float = opt(0.1, "a rate")
    name: str | None = opt(None, "a name")
    flag: bool = opt(False, "a flag")
    items: list[str] = opt(["a"], "items")


def test_layers_later_wins():
    cfg = resolve_config(Toy, {"size": 5, "rate": 1}, {"size": "7", "items": "x,y"})
    assert (cfg.size, cfg.rate, cfg.items) == (7, 1.0, ["x", "y"])


@pytest.mark.parametrize("layer,msg", [
    ({"sise": 3}, "unknown option 'sise' \\(did you mean 'size'\\?\\)"),
    ({"size": "big"}, "toy.size: expected an integer"),
    ({"size": True}, "toy.size: expected an integer"),
    ({"rate": [1]}, "toy.rate: expected a number"),
    ({"flag": "maybe"}, "toy.flag: expected true/false"),
    ({"items": 3}, "toy.items: expected a list"),
    ({"size": None}, "toy.size: must not be null"),
])
def test_bad_values_are_one_line_errors(layer, msg):
    with pytest.raises(WeblyError, match=msg):
        resolve_config(Toy, layer, where="toy")


def test_validate_rejects_negative_sizes():
    from webly.app.demo.synth import SynthConfig

    with pytest.raises(WeblyError, match="min_per_class"):
        resolve_config(SynthConfig, {"min_per_class": -1})


def test_config_show_merges_file(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("synth:\n  seed: 9\nshard:\n  short_side: 128\n")
    assert main(["config", "show", "--config", str(f)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["synth"]["seed"] == 9 and shown["shard"]["short_side"] == 128
    assert shown["index"]["train_list"] == "all"


def test_config_show_unknown_stage_and_key(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("synth:\n  sed: 9\n")
    assert main(["config", "show", "--config", str(f)]) == 2
    assert "unknown option 'sed'" in capsys.readouterr().err
    f.write_text("tagg: {}\n")
    assert main(["config", "show", "--config", str(f)]) == 2
    assert "unknown stage(s) ['tagg']" in capsys.readouterr().err


def test_flags_win_over_file_and_config_is_saved(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("synth:\n  seed: 9\n  families: 1\n  per_family: 2\n  max_per_class: 3\n"
                 "  min_per_class: 2\n  val_per_class: 1\n  test_per_class: 1\n  images: false\n")
    out = tmp_path / "data"
    assert main(["synth", "-o", str(out), "--config", str(f), "--seed", "4"]) == 0
    saved = yaml.safe_load((out / "synth.config.yaml").read_text())["synth"]
    assert saved["seed"] == 4 and saved["families"] == 1 and saved["images"] is False


def test_a_checkpoint_older_than_an_option_resumes_at_its_default():
    """A run checkpointed before `lookahead` existed trained without it: resuming is the same
    config; asking for it now is a change the checkpoint cannot continue."""
    from dataclasses import asdict

    from webly.training.config import TrainConfig, check_resume_config

    now = {"task": "finetune", **asdict(TrainConfig())}
    old = {k: v for k, v in now.items() if k != "lookahead"}
    assert check_resume_config(old, now, 10, 10, force=False) == []
    with pytest.raises(WeblyError, match="lookahead 0.0 -> 0.95"):
        check_resume_config(old, {**now, "lookahead": 0.95}, 10, 10, force=False)
