"""Turning scores into numbers, figures and reports.

Owns metrics per scenario (:mod:`.metrics`), matplotlib figures (:mod:`.plots`; a sweep's in
:mod:`.sweep_plots`), notebook run records, their scores and tables (:mod:`.records`), a
``kdkit train`` run folder read as such a record (:mod:`.train_run`), the headline table that
opens every report (:mod:`.headline`), the HTML report of a run folder (:mod:`.html`) and of a
sweep (:mod:`.sweep`).

Layer 4: may import :mod:`kdkit.data`, :mod:`kdkit.models`, :mod:`kdkit.config` and
:mod:`kdkit.training`.
"""
