"""The ipywidgets panel the notebooks show (:mod:`.widgets`): controls derived from the run
schema, a live progress bar and loss plot, and buttons that call the same functions as the CLI.

Front end, beside :mod:`kdkit.cli`: may import any library layer; no library module imports it.
"""
