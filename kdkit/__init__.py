"""kdkit: train, distill and benchmark graph neural networks that detect attacks on a car's CAN bus.

Data flows one way (see docs/DESIGN.md):
files -> :mod:`kdkit.data.readers` (``Messages``) -> :mod:`kdkit.data.graphs` (window graphs, stored by
:mod:`kdkit.data.datasets`) -> :mod:`kdkit.models` -> :mod:`kdkit.reporting.metrics`.
:mod:`kdkit.workflows` runs the steps (``make_config`` + ``train``, ``evaluate_checkpoint``).
"""
__version__ = "0.1.0"
