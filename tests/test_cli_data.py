"""The data commands through the real CLI: output, and clear errors instead of tracebacks."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import click
from click.testing import CliRunner

from sertool.cli.commands import cli
from tests.corpus_files import write_tone


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0 and "data" in result.output
    result = run("data", "--help")
    assert all(name in result.output for name in ("demo", "info", "manifest"))


def _help_sections(text: str) -> dict[str, list[tuple[str, int]]]:
    """The help's sections (a line "Title:" at the margin, then indented rows): title → [(first word, its
    column of help text)]."""
    sections: dict[str, list[tuple[str, int]]] = {}
    rows: list[tuple[str, int]] = []
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            rows = sections.setdefault(line[:-1], [])
        elif line.startswith("  ") and line.strip():
            name, _, rest = line.strip().partition(" ")
            rows.append((name, len(line) - len(rest.lstrip()) if rest.strip() else -1))
    return sections


def test_the_command_list_is_grouped_in_the_order_of_the_work():
    """`sertool --help` lists every command once, under its group, in COMMAND_SECTIONS' order, the short help of
    all in one column; a command added without a group still shows, under "Other commands"."""
    from sertool.cli import commands

    sections = _help_sections(CliRunner().invoke(cli, ["--help"], terminal_width=100).output)
    titles = [title for title, _ in commands.COMMAND_SECTIONS]
    assert [title for title in sections if title not in ("Usage", "Options")] == titles
    listed = [name for title in titles for name, _ in sections[title]]
    assert listed == [name for _, names in commands.COMMAND_SECTIONS for name in names]
    assert sorted(listed) == sorted(cli.commands)  # every command, once
    assert sections["Training"][0][0] == "train" and sections["Corpora"] == [("data", sections["Corpora"][0][1])]
    assert len({column for title in titles for _, column in sections[title]}) == 1

    @click.command("extra")
    def extra() -> None:
        """A command no group names."""

    group = commands._Group(commands=[*cli.commands.values(), extra], sections=commands.COMMAND_SECTIONS,
                            name="sertool")
    text = CliRunner().invoke(group, ["--help"], terminal_width=100).output
    assert [name for name, _ in _help_sections(text)[commands.OTHER_COMMANDS]] == ["extra"]


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "sertool", "--version"], capture_output=True, text=True, check=True)
    assert "sertool" in result.stdout


def test_info_on_an_msp_root(tiny_msp):
    result = run("data", "info", str(tiny_msp))
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "3" in lines["Train"].split("│")[2]  # 3 utterances
    assert lines["Test3"].split("│")[7].strip() == "0"  # Test3 is unlabelled
    assert "X no agreement" in result.output and "O other" in result.output
    assert "1 missing transcript" in result.output  # the report goes to stderr; CliRunner mixes it in
    assert run("data", "info", "--corpus", str(tiny_msp)).output == result.output


def test_info_json_holds_the_numbers_of_the_table(tiny_msp):
    table = run("data", "info", str(tiny_msp))
    printed = CliRunner().invoke(cli, ["data", "info", str(tiny_msp), "--json"], catch_exceptions=False)
    assert printed.exit_code == 0
    document = json.loads(printed.stdout)  # stdout holds the JSON alone
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in table.output.splitlines() if line.count("│") > 3}
    assert [split["split"] for split in document["splits"]] == ["Train", "Development", "Test1", "Test3", "all"]
    for split in document["splits"]:
        cells = rows[split["split"]]
        assert cells[1:3] == [f"{split['utterances']:,}", f"{split['hours']:.2f}"]
        assert cells[4] == f"{split['speakers']:,}" and cells[6] == f"{split['labelled']:,}"
        assert cells[8] == f"{split['no_class_share']:.1%}"
    assert document["kind"] == "msp-podcast" and document["dropped_rows"] >= 0


def test_bad_corpus_paths_give_one_line_errors(tmp_path):
    for args in (["data", "info", str(tmp_path / "missing")], ["data", "info", str(tmp_path)], ["data", "info"]):
        result = run(*args)
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_manifest_command_writes_a_readable_manifest_and_refuses_to_overwrite(tmp_path):
    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "speaker", "emotion", "v"])
        for speaker in "abcdef":
            write_tone(tmp_path / f"{speaker}.wav", duration_s=0.3, sample_rate=22_050, channels=2)
            writer.writerow([f"{speaker}.wav", speaker, "sad", "0.25"])
        writer.writerow(["missing.wav", "g", "sad", "0.5"])
    out = tmp_path / "out" / "manifest.csv"
    args = ["data", "manifest", str(tmp_path), str(meta), "--out", str(out), "--path-column", "file",
            "--speaker-column", "speaker", "--class-column", "emotion"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "dropped 1 row (1 missing audio)" in result.output and "missing.wav" in result.output
    info = run("data", "info", str(out))
    assert info.exit_code == 0 and "S sad" in info.output
    before = out.read_bytes()
    again = run(*args)
    assert again.exit_code == 2 and "--force" in again.output
    assert out.read_bytes() == before  # nothing already written is lost
    wrong = run(*args[:-1], "nope", "--force")
    assert wrong.exit_code == 2 and "missing column(s) nope (--class-column)" in wrong.output


def test_demo_size_names_match_the_generator():
    from sertool.cli.options import DEMO_SIZE_NAMES
    from sertool.demo.corpus import DEMO_SIZES

    assert tuple(DEMO_SIZES) == DEMO_SIZE_NAMES
