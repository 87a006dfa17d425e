"""Generate the reference pages from the code at build time (mkdocs-gen-files): every
command of the CLI with its options, and every config field with its type, default and
help. Nothing here is retyped: a new option appears in the docs by being declared."""

from __future__ import annotations

import re

import mkdocs_gen_files
from typer.main import get_command

from iisan.cli import app
from iisan.config import EncodeConfig, PrepareConfig, TrainConfig
from iisan.data.synth import SynthConfig
from iisan.efficiency import EfficiencyConfig
from iisan.methods import describe_train_default
from iisan.options import all_specs, describe_default

MARKUP = re.compile(r"\[/?(bold|dim|italic)?\]")  # rich markup in help texts


def plain(text: str) -> str:
    return MARKUP.sub("", text or "").replace("\\[", "[").replace("|", "\\|").strip()


def commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():  # in the order --help lists them
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def option_rows(command) -> list[str]:
    rows = []
    for param in command.params:
        if param.param_type_name == "argument":
            rows.append(f"| `{param.name.upper()}` | argument | {plain(getattr(param, 'help', ''))} |")
            continue
        names = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
        shown = f" (default: `{param.default}`)" if param.show_default and param.default not in (None, False) else ""
        rows.append(f"| {names} | {getattr(param, 'rich_help_panel', None) or 'Options'} | "
                    f"{plain(param.help)}{shown} |")
    return rows


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    print("# Command line\n\nEvery `iisan` command and its options, generated from the code "
          "(the same text as `iisan COMMAND --help`). Options that configure a stage come from its "
          "config's fields: see [Options](options.md).\n", file=page)
    root = get_command(app)
    for path, command in commands(root):
        doc = plain(command.help or "").split("\n\n")
        print(f"## iisan {' '.join(path)}\n", file=page)
        prose = [p for p in doc if not p.startswith("  ") and p != "Examples" and p != "Example"]
        examples = [p.strip() for p in doc if p.startswith("  ")]
        print("\n\n".join(prose) + "\n", file=page)
        if examples:
            print("```bash\n" + "\n".join(line.strip() for e in examples for line in e.splitlines()) + "\n```\n",
                  file=page)
        print("| option | group | what it does |\n| --- | --- | --- |", file=page)
        print("\n".join(option_rows(command)) + "\n", file=page)

CONFIGS = [("iisan prepare", PrepareConfig), ("iisan encode", EncodeConfig), ("iisan train", TrainConfig),
           ("iisan data synth", SynthConfig), ("iisan bench efficiency", EfficiencyConfig)]
with mkdocs_gen_files.open("reference/options.md", "w") as page:
    print("# Options\n\nEach option is one field of a config class, declared once with its type, default, "
          "bounds and help (`iisan.options.option`). The command line, the keys of a `--config` file "
          "(TOML, YAML or JSON, by field name), the checks and this page are derived from it.\n", file=page)
    for command, config in CONFIGS:
        print(f"## {config.__name__} (`{command}`)\n", file=page)
        print("| field | flag | type | default | what it does |\n| --- | --- | --- | --- | --- |", file=page)
        describe = describe_train_default if config is TrainConfig else describe_default  # a method's own
        for spec in all_specs(config):
            kind = " \\| ".join(f"`{c}`" for c in spec.choices) if spec.choices else spec.kind.__name__
            kind = f"list of {kind}" if spec.is_list else kind
            print(f"| `{spec.name}` | `--{spec.flag}` | {kind} | `{describe(spec)}` | {plain(spec.help)} |",
                  file=page)
        print(file=page)
