"""The ``kdkit`` command: one parser; each sub-command is registered by its topic module.

    kdkit data simulate|prepare|info ...                     (kdkit/cli/data.py)
    kdkit train ... | evaluate ... | batch-size ... | demo   (kdkit/cli/train.py)
    kdkit bench preprocess|train|infer ...                   (kdkit/cli/bench.py)
    kdkit slurm status|wait|cancel|logs|submit-notebook      (kdkit/cli/slurm.py)
    kdkit sweep --notebook NB --grid G | status|wait|...     (kdkit/cli/sweep.py)
    kdkit report RUN_DIR [--html]                            (kdkit/cli/report.py)
    kdkit export --checkpoint best.pt                        (kdkit/cli/export.py)

Every sub-command calls the same library functions the notebooks and SLURM jobs call.

The topic modules import torch, PyG and Lightning (seconds on a small machine), so only the
one a command needs is imported: :data:`COMMANDS` names each sub-command's module and
one-line help, which is all ``kdkit --help`` shows (each topic module registers its command with
that text, so ``kdkit CMD --help`` and ``kdkit --help`` say the same). This is the one place kdkit imports its
own modules lazily (``tests/test_architecture.py`` knows it).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import importlib
import math
import os
import sys
import tempfile
from collections.abc import Sequence

# sub-command -> (topic module whose register(sub) adds it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("kdkit.cli.data", "simulate, prepare and inspect datasets"),
    "train": ("kdkit.cli.train", "train a teacher or a (distilled) student"),
    "evaluate": ("kdkit.cli.train", "metrics of a checkpoint on every test scenario"),
    "batch-size": ("kdkit.cli.train", "the largest batch that fits (DynamicBatchSizer); reports, trains nothing"),
    "demo": ("kdkit.cli.train", "the whole story on built-in synthetic traffic"),
    "bench": ("kdkit.cli.bench", "benchmarks that print JSON"),
    "slurm": ("kdkit.cli.slurm", "submit and follow SLURM jobs"),
    "sweep": ("kdkit.cli.sweep", "grids of notebook runs: one SLURM job array or a local pool; status, retry"),
    "report": ("kdkit.cli.report", "summarise a run or sweep folder, or write a self-contained HTML report"),
    "export": ("kdkit.cli.export", "ahead-of-time compile a GAT or fusion-student checkpoint for deployment (.pt2)"),
    "calibrate": ("kdkit.cli.calibrate", "re-set a checkpoint's threshold (--adapt: its IDs and scales too) from a new car's attack-free recordings"),
    "detect": ("kdkit.cli.detect", "live detection on a python-can bus or a replayed recording"),
}


# a guide-era mix-up of the model family and its role: --model teacher (the predecessor's scripts took both words)
_ROLE_WORDS = ("teacher", "student")


class _Parser(argparse.ArgumentParser):
    """argparse, whose error is the error: no usage dump of every option (``kdkit train``'s ran to 45
    lines above it), ``--help`` named instead, and a hint for ``--model teacher``."""

    argv: Sequence[str] = ()  # the command line being parsed (set by main): which sub-command an error is about

    def error(self, message: str):  # type: ignore[override]
        hint, prog = "", self.prog
        if "argument --model: invalid choice" in message and any(f"'{w}'" in message for w in _ROLE_WORDS):
            hint = "; --model is the family (gat, vgae, fusion), --type the role: --model gat --type teacher"
        if message.startswith("the following arguments are required:"):  # (before argparse names a misspelt one)
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            close = [f"{w} (did you mean {m[0]}?)" for w in dict.fromkeys(a.split("=")[0] for a in self.argv)
                     if w.startswith("--") and w not in known
                     and (m := difflib.get_close_matches(w, known, n=1, cutoff=0.8))]
            if close:
                hint = "; " + ", ".join(close)
        if message.startswith("unrecognized arguments:"):
            # argparse says it on the top parser, whose --help lists no sub-command's options: name the
            # sub-command's help, and the option meant where one is close
            parser, words = self._subcommand(self.argv)
            if words:
                prog = " ".join([self.prog, *words])
            known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            close = [f"{o} (did you mean {m[0]}?)" for o in message.split(":", 1)[1].split()
                     if o.startswith("--") and (m := difflib.get_close_matches(o.split("=")[0], known, n=1, cutoff=0.8))]
            if close:
                hint = "; " + ", ".join(close)
            if "--use-fabric" in message:  # the predecessor's compatibility flag (its migration guide)
                hint += "; --use-fabric is gone: Lightning Fabric is kdkit train's trainer by default (--trainer fabric|legacy)"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n(`{prog} --help` lists the options)\n")

    def _subcommand(self, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
        """The (sub-)sub-command parser ``argv`` names, and its words (``data``, ``info``)."""
        parser, words = self, []
        for word in argv:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if word.startswith("-") or not subs or word not in subs[0].choices:
                break
            parser, words = subs[0].choices[word], [*words, word]
        return parser, words


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``kdkit`` parser: full options for the sub-commands of ``command``'s topic module
    (``"*"``: every topic; None: none) and one-line entries for the others."""
    parser = _Parser(prog="kdkit", description="Train, distill and benchmark CAN-bus intrusion detection GNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    wanted = {module for name, (module, _) in COMMANDS.items() if command in ("*", name)}
    for module in dict.fromkeys(module for module, _ in COMMANDS.values()):
        if module in wanted:
            importlib.import_module(module).register(sub)
    for name, (module, help_text) in COMMANDS.items():
        if module not in wanted:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


CACHE_DIR_HELP = ("graph stores and the built-in synthetic data (default ./runs/cache and ./runs/data, or "
                  "$KDKIT_CACHE_DIR and $KDKIT_SYNTHETIC_ROOT; --runs-dir does not move them)")


@contextlib.contextmanager
def cache_dir_env(cache_dir: str | None):
    """``--cache-dir DIR`` for the length of one command: ``$KDKIT_CACHE_DIR`` (graph stores, the batch
    sizer's and precision policy's records) and, unless set, ``$KDKIT_SYNTHETIC_ROOT`` (the built-in
    synthetic data, ``DIR/synthetic-seed{seed}``), absolute, so DDP workers and a SLURM job submitted
    by the command (sbatch passes the environment on) use them too. Restored afterwards: a notebook
    or test calling :func:`main` twice keeps its own environment."""
    if not cache_dir:
        yield
        return
    root = os.path.abspath(os.path.expanduser(cache_dir))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"--cache-dir {cache_dir} is a file: give a folder (created when missing)")
    wanted = {"KDKIT_CACHE_DIR": root}
    if not os.environ.get("KDKIT_SYNTHETIC_ROOT"):
        wanted["KDKIT_SYNTHETIC_ROOT"] = os.path.join(root, "synthetic-seed{seed}")
    before = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refuse_overwriting_inputs(outputs: dict[str, str | None], inputs: dict[str, str | list | None]) -> None:
    """An output path that is one of the command's own inputs is refused before anything is read or
    written: ``kdkit detect --input rec.csv --alarms rec.csv`` emptied the recording, ``kdkit export --out
    best.pt`` replaced the checkpoint with the package (exit 0 both).

    Raises:
        ValueError: naming both flags and the path.
    """
    for flag, out in outputs.items():
        if not out:
            continue
        target = os.path.realpath(os.path.expanduser(out))
        for in_flag, values in inputs.items():
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if value and os.path.realpath(os.path.expanduser(value)) == target:
                    raise ValueError(f"{flag} {out} is the {in_flag} this command reads: writing it would replace "
                                     f"that file; choose another {flag}")


def check_output_file(flag: str, path: str | None) -> None:
    """An output file is checked before the work that fills it: a folder, or a path whose folder does not
    exist, failed after the run (``kdkit detect --summary``: hours of a live bus, then a traceback).

    Raises:
        ValueError: naming the flag and the path.
    """
    if not path:
        return
    target = os.path.expanduser(path)
    if os.path.isdir(target):
        raise ValueError(f"{flag} {path} is a folder: give a file path in it")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: its folder {folder} does not exist")
    check_writable(flag, path)


def check_writable(flag: str, path: str | None) -> None:
    """An output path is tried before the work: a folder this user cannot write (a shared lab folder,
    a read-only mount) failed after the run, with torch's traceback for a checkpoint. An existing file
    is opened to append (nothing written), else a scratch file is made and removed in the nearest
    folder that exists (kdkit makes the folders below it).

    Raises:
        ValueError: naming the flag, the path and the system's reason.
    """
    if not path:
        return
    target = os.path.abspath(os.path.expanduser(path))
    try:
        if os.path.isfile(target):
            open(target, "ab").close()  # noqa: SIM115 - opened to see that it can be
            return
        if os.path.exists(target):  # a device or a pipe (/dev/null, /dev/stdout): opening a pipe would wait
            if not os.access(target, os.W_OK):
                raise PermissionError(13, "Permission denied", target)
            return
        folder = os.path.dirname(target)
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kdkit-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written: {err.strerror or err} ({err.filename or folder}); choose "
                         f"a folder of your own") from None


def whole(minimum: int):
    """An argparse ``type``: a whole number >= ``minimum`` (``--repeats 0`` or ``--threads -1`` got a
    traceback, or a report of nothing, from deep inside the command)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    convert.__name__ = f"whole number >= {minimum}"
    return convert


def seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run one ``kdkit`` command; ``argv`` None: this process is the command (``sys.argv``)."""
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    if own_process:
        # The imports (torch, PyG, Fabric) leave ~430,000 objects that live as long as the process.
        # Every full garbage collection walked them all, up to ~0.2 s each: while the imports ran
        # (they collect as the objects pile up) and when a run's phases collect on purpose
        # (kdkit.training.memory.phase_peak). So no collection runs during the imports, and then
        # their objects are frozen out of the collector's reach; forked DDP workers inherit it.
        # Not in a caller's process (tests, notebooks): what it frees later must stay collectable.
        gc.disable()
    try:
        try:
            parser = build_parser(command if command in COMMANDS else None)
            _Parser.argv = tuple(argv if argv is not None else sys.argv[1:])  # sub-parsers read it too
            args = parser.parse_args(argv)  # an unknown command: argparse says so
        finally:
            if own_process:
                gc.freeze()
                gc.enable()
        with cache_dir_env(getattr(args, "cache_dir", None)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C while starting (the imports, loading a model): no traceback
        if os.environ.get("KDKIT_DEBUG"):
            raise
        print(f"kdkit{' ' + command if command in COMMANDS else ''}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:  # incl. kdkit.data.readers.DataFormatError
        if os.environ.get("KDKIT_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"kdkit: error: {msg}", file=sys.stderr)
        return 2
    except NotADirectoryError as err:  # a folder kdkit writes to lies under a file (--runs-dir results.csv)
        if os.environ.get("KDKIT_DEBUG"):
            raise
        print(f"kdkit: error: {err.filename}: a part of this path is a file, not a folder; choose a folder for "
              "what kdkit writes there (--runs-dir, --cache-dir, --out)", file=sys.stderr)
        return 2
    except PermissionError as err:  # a cache, runs or output folder this user cannot write (a shared lab folder)
        if os.environ.get("KDKIT_DEBUG"):
            raise
        print(f"kdkit: error: {err.strerror or 'permission denied'}: {err.filename}. A folder kdkit writes to: choose "
              f"one of your own (--cache-dir or $KDKIT_CACHE_DIR for the graph cache, --runs-dir for runs, --out for "
              f"outputs); data: ask for read access", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
