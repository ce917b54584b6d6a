"""Benchmarks that print JSON: data preparation (:mod:`.preprocess`), training steps
(:mod:`.train`), student inference (:mod:`.infer`) and the teacher/student comparison the
benchmark notebook shows (:mod:`.compare`).

Layer 7: may import every library layer; never a front end.
"""
