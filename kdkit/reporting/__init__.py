"""Turning scores into numbers, figures and reports.

Owns metrics per scenario (:mod:`.metrics`), matplotlib figures (:mod:`.plots`), notebook
run records and tables (:mod:`.records`) and the HTML report of a run folder
(:mod:`.html`).

Layer 4: may import :mod:`kdkit.data`, :mod:`kdkit.models`, :mod:`kdkit.config` and
:mod:`kdkit.training`.
"""
