"""Running a trained student outside kdkit: ahead-of-time export for a gateway (:mod:`.export`).

Layer 6: may import the library layers up to :mod:`kdkit.workflows`.
"""
