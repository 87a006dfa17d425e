"""Options are defined once, as config fields (issue 29): the command line, --config keys,
validation and the reference are derived from them."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from iisan.cli import app
from iisan.cli.generated import Options, with_options
from iisan.config import (
    EncodeConfig, EvaluateConfig, IndexConfig, PrepareConfig, Query, ServeConfig, SideNetworkConfig,
    TrainConfig, UserEncoderConfig,
)
from iisan.data.synth import SynthConfig
from iisan.efficiency import EfficiencyConfig
from iisan.errors import ConfigError
from iisan.method_options import ContentConfig, EncoderTuningConfig
from iisan.options import all_specs, option_specs

COMMANDS = {("prepare",): PrepareConfig, ("encode",): EncodeConfig, ("train",): TrainConfig,
            ("data", "synth"): SynthConfig, ("bench", "efficiency"): EfficiencyConfig,
            ("evaluate",): EvaluateConfig, ("recommend",): Query, ("index", "build"): IndexConfig,
            ("serve",): ServeConfig}
CONFIGS = tuple(COMMANDS.values())


def _command(path: tuple[str, ...]):
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_each_config_field_is_exactly_one_option_of_its_command(path):
    command = _command(path)
    flags = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts)]
    assert len(flags) == len(set(flags)), "a flag is declared twice"
    by_name = {param.name: param for param in command.params}
    for spec in all_specs(COMMANDS[path]):
        assert f"--{spec.flag}" in by_name[spec.name].opts
        assert spec.help and spec.help in by_name[spec.name].help


def _leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_no_command_declares_a_config_option_again_by_hand():
    """An option that some config defines is generated from that field on every command
    that takes it (quickstart's --epochs, items add's --allow-outside-paths, index check's
    -k), never declared a second time with its own help and default."""
    configs = {*CONFIGS, SynthConfig}
    field_flags = {opt for config in configs for spec in all_specs(config)
                   for opt in (f"--{spec.flag}", *(f"-{a}" for a in spec.aliases if len(a) == 1))}
    twice = []
    for path, command in _leaf_commands(get_command(app)):
        generated = {spec.name for spec in getattr(command.callback, "option_specs", ())}
        twice += [f"iisan {' '.join(path)} {opt}" for param in command.params if param.name not in generated
                  for opt in param.opts if opt in field_flags]
    assert len(list(_leaf_commands(get_command(app)))) >= 15
    assert not twice, twice


def test_a_command_cannot_declare_a_config_field_by_hand():
    def train(epochs: Annotated[int, typer.Option()] = 3, options: Options | None = None) -> None: ...

    with pytest.raises(TypeError, match="define them once"):
        with_options(TrainConfig)(train)


def test_option_names_are_unique_across_nested_configs():
    for config in CONFIGS:
        names = [spec.name for spec in all_specs(config)]
        flags = [spec.flag for spec in all_specs(config)]
        assert len(names) == len(set(names)) and len(flags) == len(set(flags)), config.__name__


@pytest.mark.parametrize("config", [*CONFIGS, SideNetworkConfig, UserEncoderConfig, ContentConfig,
                                    EncoderTuningConfig], ids=lambda c: c.__name__)
def test_every_choice_and_bound_is_enforced(config):
    """Each field with choices refuses a value outside them, and each bounded one a value
    below its bound, with the field named: validation comes from the field, not a tuple
    kept beside it."""
    required = {"format": "csv"} if config is PrepareConfig else {}
    for spec in option_specs(config):
        bad = []
        if spec.choices is not None:
            bad.append("no-such-choice")
        if spec.minimum is not None:
            bad.append(spec.minimum - 1)
        if spec.above is not None:
            bad.append(spec.above)
        if spec.maximum is not None:
            bad.append(spec.maximum + 1)
        for value in bad:
            value = (value,) if spec.is_list else value
            with pytest.raises(ConfigError, match=spec.name):
                config(**{**required, spec.name: value})


def test_names_say_what_they_count():
    assert "batch_size" not in {spec.name for config in CONFIGS for spec in all_specs(config)}
    assert [spec.names for spec in option_specs(TrainConfig) if spec.name == "train_batch_size"] == [
        ("train_batch_size", "train_batch_size", "batch_size")]


def test_method_defaults_apply_under_explicit_options():
    config = TrainConfig.from_options({"method": "id", "patience": 3, "dim": 32, "layer_rule": "every_other"})
    assert (config.patience, config.loss, config.train_batch_size) == (3, "full", 256)  # id's own loss and batch
    assert (config.user.dim, config.user.dropout, config.side.layer_rule) == (32, 0.5, "every_other")
    with pytest.raises(ConfigError, match="no such option"):
        TrainConfig.from_options({"bogus": 1})


def test_help_shows_method_defaults_and_uses_the_width():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "100"}, terminal_width=100)
    text = result.output
    assert "256 for id" in text and "10 for id" in text  # id's own batch and patience
    assert "Value error" not in text and "<bool>" not in text.split("--help")[0]
    widest_help = max(len(line.split("  ")[-1]) for line in text.splitlines() if line.startswith("│"))
    assert widest_help > 40  # descriptions get the terminal's width, not a 22-column strip


def test_resume_takes_the_runs_model_and_a_new_recipe(tiny_run):
    from iisan.run.files import resume_settings

    saved, _ = resume_settings(tiny_run)
    again, _ = resume_settings(tiny_run, {"seed": saved.seed, "epochs": saved.epochs + 2, "lr": 5e-4})
    assert again == dataclasses.replace(saved, epochs=saved.epochs + 2, lr=5e-4)
    with pytest.raises(ConfigError, match=r"only its recipe .* may change: --bottleneck 7 \(the run has"):
        resume_settings(tiny_run, {"bottleneck": 7})
    with pytest.raises(ConfigError, match=r"--method id \(the run has iisan\)"):
        resume_settings(tiny_run, {"method": "id"})
