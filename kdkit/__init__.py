"""kdkit: train, distill and benchmark graph neural networks that detect attacks on a car's CAN bus.

Data flows one way (see docs/DESIGN.md):
files -> :mod:`kdkit.data` -> :mod:`kdkit.graphs` (via :mod:`kdkit.datasets`) -> models -> metrics.
"""
__version__ = "0.1.0"
