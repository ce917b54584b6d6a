"""The ``kdkit`` command: argparse sub-commands over the library (front end).

:mod:`.main` builds the parser; each sub-command lives beside its topic (:mod:`.data`,
:mod:`.train`, :mod:`.bench`, :mod:`.slurm`, :mod:`.report`, :mod:`.export`).

Front end: may import any library layer; no library module imports it.
"""
from kdkit.cli.main import main

__all__ = ["main"]
