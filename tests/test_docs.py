"""The README and the documentation run: their tour runs end to end (tiny encoders instead
of the packaged ones, one epoch), and every `iisan` command line in any of their bash
blocks parses (its command, options and choices exist)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tests.conftest import png_bytes

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
TINY = {"encode": ["--text-encoder", "tiny-random-text", "--image-encoder", "tiny-random-image", "--image-size", "32"],
        "train": ["--epochs", "1"]}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def command_lines(block: str) -> list[str]:
    """The `iisan ...` lines of a bash block: continuations joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        for part in re.split(r"&&|;|\|", line):
            part = part.strip()
            if part.startswith("iisan "):
                lines.append(part)
    return lines


def write_csv_shop(folder: Path, users: int = 40, items: int = 30) -> None:
    """events.csv and items.csv as the README's tour expects, half the items with a photo."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    rows = ["item,text,image"]
    for i in range(items):
        image = ""
        if i % 2 == 0:
            (folder / "img" / f"sku-{i}.png").write_bytes(png_bytes((10 * (i % 20), 80, 200 - 5 * (i % 30))))
            image = f"img/sku-{i}.png"
        rows.append(f"sku-{i},Product {i} of family {i % 5},{image}")
    (folder / "items.csv").write_text("\n".join(rows) + "\n")
    events = ["user,item,timestamp"]
    for u in range(users):
        for step in range(8):
            events.append(f"u{u},sku-{(u * 3 + step * (1 + u % 4)) % items},{1000 * u + step}")
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    (folder / "new-items.jsonl").write_text('{"key": "sku-new", "text": "Product new of family 2"}\n')


@pytest.mark.parametrize("page, heading", [("README.md", "## From your own CSV"),
                                           ("docs/getting-started.md", "## Your own data")])
def test_the_tour_runs_from_a_csv_to_recommendations(page, heading, tmp_path, monkeypatch):
    from iisan.cli import app

    text = (REPO / page).read_text()
    section = text[text.index(heading):]
    lines = command_lines(bash_blocks(section)[0])
    assert [shlex.split(line)[1] for line in lines] == [
        "prepare", "encode", "train", "evaluate", "recommend", "items", "serve"]
    write_csv_shop(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "serve":  # runs until stopped: the service has its own tests
            continue
        result = runner.invoke(app, [*args, *TINY.get(args[0], [])])
        assert result.exit_code == 0, f"{line}\n{result.output}"
    metrics = (tmp_path / "runs/shop/metrics.json").read_text()
    assert '"slices"' in metrics and '"cold"' in metrics

    python = re.search(r"```python\n(.*?)```", section, re.S)
    if python is None:  # the getting-started page leaves Python to its own guide
        return
    code = python.group(1)
    code = code.replace("iisan.EncodeConfig()", 'iisan.EncodeConfig(text_encoder="tiny-random-text", '
                        'image_encoder="tiny-random-image", image_size=32)')
    code = code.replace("iisan.TrainConfig()", "iisan.TrainConfig(epochs=1)").replace('"runs/shop"', '"runs/py"')
    code = code.replace('"data/shop"', '"data/py"').replace('"cache/shop"', '"cache/py"')
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_line_in_the_docs_parses(page):
    from iisan.cli import app

    root = get_command(app)
    lines = [line for block in bash_blocks(page.read_text()) for line in command_lines(block)]
    for line in lines:
        args = [arg for arg in shlex.split(line)[1:] if arg != "..."]
        command = root
        while hasattr(command, "commands") and args and args[0] in command.commands:
            command = command.commands[args.pop(0)]
        assert not hasattr(command, "commands"), f"{page.name}: no such command in {line!r}"
        if "--help" in args:
            continue
        try:
            command.make_context(command.name, args, resilient_parsing=False)
        except Exception as err:  # click's usage errors: an unknown option, a bad choice
            if "Missing" in str(err):  # a placeholder argument left out of an example
                continue
            pytest.fail(f"{page.relative_to(REPO)}: {line!r}: {err}")


def test_results_pages_open_with_the_defaults_and_read_in_minutes():
    """Each results page says first what the defaults give and what to choose, in at most 300
    lines; the history of experiments is in git."""
    for page in sorted((REPO / "docs" / "results").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 300, page.name
        assert text.split("\n## ")[1].startswith("What the defaults give"), page.name
