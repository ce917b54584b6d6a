"""SLURM: sbatch script rendering and validation (:mod:`.sbatch`), job submission,
tracking and the job registry (:mod:`.orchestrator`).

Layer 6: may import the library layers up to :mod:`kdkit.workflows`.
"""
