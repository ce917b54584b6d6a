"""``kdkit export``: the ahead-of-time compiled GAT scores like the checkpoint's model, for
batch sizes other than the example's, and writes the graph-building metadata beside it.

Run: .venv/bin/python -m pytest tests/test_export.py -q
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from kdkit.cli.main import main
from kdkit.data.loader import collate_indices


def test_export_cli_package_matches_model(exported_student, synthetic):
    from kdkit.deploy.export import load_exported, package_runner
    from kdkit.models.scorer import scorer_inputs
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

    # `kdkit export --checkpoint student.pt --out gateway/student.pt2 --json`, run once per session
    # (conftest.py; test_bench_train's bench infer scores the same package)
    student_checkpoint, out, result = exported_student
    assert out.is_file() and result["package"] == str(out) and result["bytes"] == out.stat().st_size
    assert not list(out.parent.glob(".*tmp*"))  # no temp files left behind
    meta = json.loads(out.with_suffix(".json").read_text())
    ckpt = load_checkpoint(student_checkpoint)
    assert meta["vocab"] == ckpt["vocab"] and meta["model_config"] == ckpt["model_config"]
    assert meta["inputs"] == ["x", "node_id", "edge_index", "edge_attr", "batch", "ptr", "node_slots"]
    assert meta["window"] == 100 and meta["threshold"] == 0.5
    assert meta["stride"] == 100 and meta["label_threshold"] == 0.0 and meta["role"] == "student"

    model = model_from_checkpoint(ckpt).eval()
    score = load_exported(out)
    stock = torch._inductor.aoti_load_package(str(out))
    assert package_runner(stock) is not stock  # the scorer's inputs: called through the cached spec
    gs = synthetic.splits["val"]
    for idx in ([3], list(range(5, 22)), list(range(len(gs)))[:150]):  # other graph/node/edge counts than the example
        batch = collate_indices(gs, idx)
        with torch.no_grad():
            ref = model(batch)
        got = score(batch)
        assert got.shape == (len(idx), 2)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        assert torch.equal(batch.edge_index, collate_indices(gs, idx).edge_index)  # the caller's batch untouched
        # the cached-spec runner gives exactly what the stock AOTICompiledModel call gives
        assert torch.equal(score.run(*scorer_inputs(batch)), stock(*scorer_inputs(batch)))

    # shapes the example never had: one node with only a data self-loop, no edges, a wide graph
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    nf, ef, ids = gs.x.size(1), gs.edge_attr.size(1), meta["model_config"]["num_ids"]

    def graph(n, edges):
        e = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
        return Data(x=torch.rand(n, nf), node_id=torch.randint(0, ids, (n,)), edge_index=e,
                    edge_attr=torch.rand(e.size(1), ef))

    wide = graph(80, [(i % 80, (7 * i + 1) % 80) for i in range(200)])
    for graphs in ([graph(1, [(0, 0)])], [graph(2, [])], [wide, graph(1, [(0, 0)])]):
        batch = Batch.from_data_list(graphs)
        with torch.no_grad():
            torch.testing.assert_close(score(batch), model(batch), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"edge_index spans 0\.\.5, outside 0\.\.2"):  # not an abort
        score(Batch.from_data_list([graph(3, [(0, 5)])]))

    # the README's live-detection example runs as written (its file names swapped for this test's files)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index('det = Detector.from_exported("student.pt2")')
    code = readme[readme.rindex("```python", 0, start) + len("```python"):readme.index("```", start)]
    recording = sorted(Path(os.environ["KDKIT_SYNTHETIC_ROOT"].format(seed=0)).rglob("*.csv*"))[0]
    for name, path in (("student.pt2", out), ("capture.log", recording)):
        assert f'"{name}"' in code, name
        code = code.replace(f'"{name}"', repr(str(path)))
    names: dict = {}
    exec(compile(code, "README.md (live detection example)", "exec"), names)  # noqa: S102 - our own README
    assert len(names["decisions"]) > 0 and all(d["score"] >= d["threshold"] for d in names["alarms"])
    assert names["decision"] is None  # one more frame does not close a window


def test_export_rejects_vgae_and_missing_package(synthetic, tmp_path):
    from kdkit.deploy.export import export_model, load_exported
    from kdkit.models.registry import build_model

    gs = synthetic.splits["val"]
    vgae = build_model("vgae", "student", gs.x.size(1), gs.edge_attr.size(1), len(synthetic.vocab))
    with pytest.raises(ValueError, match="GAT classifier"):
        export_model(vgae, collate_indices(gs, [0, 1]), tmp_path / "v.pt2")
    with pytest.raises(FileNotFoundError, match="kdkit export"):
        load_exported(tmp_path / "missing.pt2")


def test_export_checks_the_checkpoint_before_building_anything(student_checkpoint, tmp_path, capsys):
    """A VGAE, a checkpoint without graph settings, an inflated model config or another vocabulary
    is refused with a message naming the file; no package is written."""
    ck = torch.load(student_checkpoint, weights_only=True)
    cases = {
        "vgae.pt": (dict(ck, model_config={**ck["model_config"], "kind": "vgae"}),
                    "is a vgae checkpoint: export supports the GAT classifier"),
        "no_graph.pt": (dict(ck, train_config={k: v for k, v in ck["train_config"].items() if k != "window"}),
                        "records no graph settings (train_config window/stride)"),
        "huge.pt": (dict(ck, model_config={**ck["model_config"], "heads": 10_000}),
                    "model option heads=10,000 is outside 1..64"),
        "vocab.pt": (dict(ck, vocab=ck["vocab"][:-3]),
                     "exported checkpoint's ID vocabulary"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / name
        torch.save(bad, path)
        assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "x.pt2")]) == 2
        err = capsys.readouterr().err
        assert message in err and (name in err or "vocabulary" in message), err
    assert not list(tmp_path.glob("*.pt2")) and not list(tmp_path.glob(".*tmp*"))


def test_package_runner_caches_the_call_spec_and_falls_back_for_other_inputs():
    from torch.utils import _pytree as pytree

    from kdkit.deploy.export import package_runner
    from kdkit.models.scorer import INPUTS

    class Loader:  # an AOTIModelPackageLoader's call interface; the "kernel" adds 1 to the first input
        def __init__(self, n_inputs):
            self.spec_calls = 0
            args = tuple(torch.zeros(1) for _ in range(n_inputs))
            self.spec = (pytree.treespec_dumps(pytree.tree_flatten((args, {}))[1]),
                         pytree.treespec_dumps(pytree.tree_flatten(torch.zeros(1))[1]))

        def get_call_spec(self):
            self.spec_calls += 1
            return self.spec

        def boxed_run(self, flat):
            return [flat[0] + 1]

    class Program:
        def __init__(self, n_inputs):
            self.loader = Loader(n_inputs)

    program = Program(len(INPUTS))
    run = package_runner(program)
    tensors = [torch.full((2,), float(i)) for i in range(len(INPUTS))]
    for _ in range(3):
        assert torch.equal(run(*tensors), torch.ones(2))
    assert program.loader.spec_calls == 1  # parsed once, not per call
    with pytest.raises(TypeError, match="takes 7 tensors"):
        run(*tensors[:3])
    other = Program(1)  # not the scorer's inputs: the package is called the stock way
    assert package_runner(other) is other
