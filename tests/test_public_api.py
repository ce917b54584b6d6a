"""The public API: every kdkit import the README, docs and notebooks show works, and the names
the subpackages export exist.

Run: .venv/bin/python -m pytest tests/test_public_api.py -q
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(from kdkit[\w.]* import [\w, ()]+|import kdkit[\w.]*(?: as \w+)?)\s*(?:#.*)?$")


def _shown_imports() -> list[tuple[str, str]]:
    found = []
    texts = [(p, p.read_text()) for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        texts.append((nb, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")))
    for path, text in texts:
        for line in text.splitlines():
            m = IMPORT.match(line)
            if m and "(" not in m.group(1):
                found.append((path.name, m.group(1).strip()))
    return found


SHOWN = _shown_imports()


def test_the_docs_and_notebooks_show_imports():
    names = {name for name, _ in SHOWN}
    assert {"README.md", "teacher.ipynb", "student.ipynb", "benchmark.ipynb"} <= names


@pytest.mark.parametrize("where, statement", SHOWN, ids=[f"{w}:{s}" for w, s in SHOWN])
def test_shown_import_works(where, statement):
    exec(statement, {})  # noqa: S102 - the statement comes from our own docs


@pytest.mark.parametrize("package", ["kdkit.data", "kdkit.models", "kdkit.training", "kdkit.workflows", "kdkit.cli"])
def test_package_exports_exist(package):
    module = importlib.import_module(package)
    assert module.__all__, package
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{package}.{name}"


def test_the_main_entry_points():
    from kdkit.cli import main
    from kdkit.config import TrainConfig, make_config
    from kdkit.workflows import evaluate_checkpoint, load_data, train

    assert callable(main) and callable(train) and callable(evaluate_checkpoint) and callable(load_data)
    assert isinstance(make_config(dataset="synthetic"), TrainConfig)
    assert main(["train", "--list-configs"]) == 0


def test_the_command_freezes_its_imports_and_a_caller_keeps_its_collector(monkeypatch):
    """``kdkit`` as its own process runs no garbage collection during its imports and then moves
    their objects out of the collector's reach (each full collection walked ~430,000 of them); a
    caller of ``main(argv)`` (a test, a notebook) keeps its collector as it was."""
    import gc
    import sys

    import kdkit.cli  # noqa: F401  (loads kdkit.cli.main)

    cli_main = sys.modules["kdkit.cli.main"]  # the module: kdkit.cli.main the attribute is the function
    frozen, collecting_while_importing = [], []
    monkeypatch.setattr(cli_main.gc, "freeze", lambda: frozen.append(True))
    build = cli_main.build_parser
    monkeypatch.setattr(cli_main, "build_parser",
                        lambda command: collecting_while_importing.append(gc.isenabled()) or build(command))
    assert cli_main.main(["train", "--list-configs"]) == 0
    assert frozen == [] and collecting_while_importing == [True]
    monkeypatch.setattr(sys, "argv", ["kdkit", "train", "--list-configs"])
    assert cli_main.main() == 0
    assert frozen == [True] and collecting_while_importing == [True, False]  # no collection during the imports
    assert gc.isenabled()
    monkeypatch.setattr(sys, "argv", ["kdkit", "train", "--no-such-flag"])
    with pytest.raises(SystemExit):
        cli_main.main()
    assert gc.isenabled() and frozen == [True, True]  # a command that fails to parse leaves it as it found it


def test_ctrl_c_while_a_command_starts_ends_it_without_a_traceback(monkeypatch, capsys, tmp_path):
    """Ctrl-C while kdkit detect loaded its model (seconds of start-up) printed a 70-line traceback."""
    import kdkit.cli.detect as detect_cli
    from kdkit.cli.main import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(detect_cli, "_detector", interrupted)
    rec = tmp_path / "drive.csv"
    rec.write_text("timestamp,arbitration_id,data_field,attack\n0.0,0C1,00,0\n")
    assert main(["detect", "--model", str(tmp_path / "student.pt2"), "--input", str(rec)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "kdkit detect: interrupted (Ctrl-C)"


@pytest.mark.parametrize("argv, expected", [
    (["data", "info", "--dataset", "synthetic", "--windw", "50"],
     "kdkit: error: unrecognized arguments: --windw 50; --windw (did you mean --window?)\n"
     "(`kdkit data info --help` lists the options)\n"),
    (["train", "--epochz=2"],
     "kdkit: error: unrecognized arguments: --epochz=2; --epochz=2 (did you mean --epochs?)\n"
     "(`kdkit train --help` lists the options)\n"),
    (["bench", "train", "--bogus"],
     "kdkit: error: unrecognized arguments: --bogus\n(`kdkit bench train --help` lists the options)\n"),
    # a misspelt required option: argparse says the right one is missing before it names the wrong one
    (["data", "info", "--datset", "synthetic"],
     "kdkit data info: error: the following arguments are required: --dataset; --datset (did you mean --dataset?)\n"
     "(`kdkit data info --help` lists the options)\n"),
])
def test_a_misspelt_option_names_the_sub_commands_help_and_the_option_meant(capsys, argv, expected):
    """A review (2026-12-07): `kdkit data info ... --windw 50` pointed to `kdkit --help`, which lists
    no option of `data info`; argparse reports unknown options on the top parser."""
    from kdkit.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and capsys.readouterr().err == expected


def test_the_predecessors_commands_get_answers_a_migrating_user_can_act_on(capsys, tmp_path):
    """A review following the predecessor's migration guide (2026-12-07, night): `--use-fabric` was an
    unknown argument with no word that Fabric is now the default; a guide dataset missing said where
    to put it but not what it is; any .txt given as --teacher was "a CAN recording"."""
    from kdkit.cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "--dataset", "synthetic", "--model", "gat", "--use-fabric"])
    assert "--use-fabric is gone: Lightning Fabric is kdkit train's trainer by default" in capsys.readouterr().err
    assert main(["data", "info", "--dataset", "hcrl_ch", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'hcrl-ch' is a set of the public can-train-and-test v1.5 release" in err and "--dataset synthetic" in err
    notes = tmp_path / "configs.txt"
    notes.write_text("epochs 1\n")
    assert main(["train", "--dataset", "synthetic", "--model", "gat", "--type", "student", "--teacher", str(notes)]) == 2
    assert f"{notes} is named as a CAN recording (.txt), not a training checkpoint" in capsys.readouterr().err


def test_a_bad_flag_is_one_error_line_and_the_role_word_as_model_is_explained(capsys):
    """`--model teacher` (the guide's scripts took role words) printed kdkit train's 45-line usage."""
    from kdkit.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "hcrl_sa", "--model", "teacher"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == ("kdkit train: error: argument --model: invalid choice: 'teacher' (choose from 'gat', 'vgae', "
                   "'fusion'); --model is the family (gat, vgae, fusion), --type the role: --model gat --type teacher\n"
                   "(`kdkit train --help` lists the options)\n")
