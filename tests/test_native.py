"""The native GAT engine (kdkit.models.native): logits equal to the PyTorch model's on simulated,
hand-made and real windows (student and teacher shapes, jk cat and max, with and without edge
features), refused where it does not apply, written by ``kdkit export`` and used by the
detector for single windows, with the same scores as the package.

Run: .venv/bin/python -m pytest tests/test_native.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data.graphs import GraphSet, IdVocab, build_graphs
from kdkit.deploy import export as export_mod
from kdkit.data.loader import gather_windows
from kdkit.data.readers import read_messages
from kdkit.models import build_model
from kdkit.models.native import NativeGAT, unsupported_reason
from kdkit.stream import Detector
from kdkit.stream.window import window_graph

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


def _model(gs: GraphSet, size: str = "student", seed: int = 0, **overrides):
    """A preset GAT with random weights, attention vectors scaled up so the softmax is far from uniform."""
    torch.manual_seed(seed)
    model = build_model("gat", size, gs.x.shape[1], gs.edge_attr.shape[1], int(gs.node_id.max()) + 1, **overrides)
    with torch.no_grad():
        for conv in model.gnn.convs:
            conv.att.mul_(4.0)
            conv.bias.normal_(0, 0.1)
        for norm in model.gnn.norms:
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0, 0.2)
    return model.eval()


def _reference(model, gs: GraphSet) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(gather_windows(gs, np.arange(i, min(i + 64, len(gs)))))
                          for i in range(0, len(gs), 64)]).numpy()


@pytest.mark.parametrize("size,overrides", [
    ("student", {}),                                   # heads averaged, no projection, jk cat
    ("student", {"jk": "max"}),
    ("teacher", {"num_layers": 2, "hidden": 32}),       # heads concatenated and projected back
    ("student", {"heads": 1, "mlp_hidden": 7}),
])
def test_logits_equal_the_model_on_simulated_windows(synthetic, size, overrides):
    split = synthetic.splits["test_01_known_vehicle_known_attack"]
    gs = split.subset(np.arange(0, len(split), 3))
    model = _model(gs, size, **overrides)
    got = NativeGAT.from_model(model).logits(gs)
    ref = _reference(model, gs)
    assert got.shape == ref.shape == (len(gs), 2)
    assert np.abs(ref[:, 0] - ref[:, 1]).std() > 0.05  # the windows are told apart: a real comparison
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


def test_logits_equal_the_model_without_edge_features(synthetic):
    gs = synthetic.splits["val"].subset(np.arange(40))
    torch.manual_seed(1)
    model = build_model("gat", "student", gs.x.shape[1], 0, int(gs.node_id.max()) + 1).eval()
    np.testing.assert_allclose(NativeGAT.from_model(model).logits(gs), _reference(model, gs), rtol=0, atol=2e-5)


def _hand_made() -> GraphSet:
    """Two graphs: the first with the data's own self-loops, a duplicate edge and a node no edge
    reaches (its self-loop features are 0); the second a single node with one self-loop."""
    rng = np.random.default_rng(3)
    edges = torch.tensor([[0, 1, 1, 2, 2, 0, 2, 0], [1, 1, 2, 0, 0, 2, 2, 0]], dtype=torch.int32)
    second = torch.tensor([[0], [0]], dtype=torch.int32)
    x = torch.from_numpy(rng.normal(size=(5, 11)).astype(np.float32))
    ea = torch.from_numpy(rng.normal(size=(9, 7)).astype(np.float32))
    return GraphSet(x=x, node_id=torch.tensor([1, 2, 3, 0, 4]), can_id=torch.arange(5), node_y=torch.zeros(5, dtype=torch.uint8),
                    edge_index=torch.cat([edges, second], 1), edge_attr=ea, node_ptr=torch.tensor([0, 4, 5]),
                    edge_ptr=torch.tensor([0, 8, 9]), y=torch.zeros(2, dtype=torch.long), attack_share=torch.zeros(2),
                    attack_type=torch.zeros(2, dtype=torch.long), file_index=torch.zeros(2, dtype=torch.long),
                    start=torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("size", ["student", "teacher"])
def test_self_loops_duplicates_and_unreached_nodes(size):
    gs = _hand_made()
    torch.manual_seed(2)
    model = build_model("gat", size, 11, 7, 5, num_layers=2).eval()
    native = NativeGAT.from_model(model)
    ref = _reference(model, gs)
    np.testing.assert_allclose(native.logits(gs), ref, rtol=0, atol=2e-5)
    one = gs.subset(np.array([0]))  # one window, as the detector's live path calls it
    got = native.logits_window(one.x.numpy(), one.node_id.numpy(), one.edge_index.numpy().astype(np.int64),
                               one.edge_attr.numpy())
    np.testing.assert_allclose(got, ref[0], rtol=0, atol=2e-5)


def test_weights_round_trip_through_an_npz(synthetic, tmp_path):
    gs = synthetic.splits["val"].subset(np.arange(30))
    native = NativeGAT.from_model(_model(gs))
    np.savez(tmp_path / "w.npz", **native.arrays())
    with np.load(tmp_path / "w.npz") as arrays:
        again = NativeGAT.from_arrays(arrays)
    assert np.array_equal(again.logits(gs), native.logits(gs))
    arrays = native.arrays()
    arrays["format"] = np.array("kdkit-native-gat/0")
    with pytest.raises(ValueError, match="re-export"):
        NativeGAT.from_arrays(arrays)


def test_refuses_what_it_does_not_run_and_bad_inputs(synthetic):
    gs = synthetic.splits["val"].subset(np.arange(10))
    f, e, ids = gs.x.shape[1], gs.edge_attr.shape[1], int(gs.node_id.max()) + 1
    assert "vgae" in unsupported_reason(build_model("vgae", "student", f, e, ids))
    assert "norm" in unsupported_reason(build_model("gat", "student", f, e, ids, norm="batch"))
    with pytest.raises(ValueError, match="cannot run"):
        NativeGAT.from_model(build_model("gat", "student", f, e, ids, norm="batch"))
    native = NativeGAT.from_model(_model(gs))
    x, node_id, ei, ea = gs.x.numpy(), gs.node_id.numpy().copy(), gs.edge_index.numpy().copy(), gs.edge_attr.numpy()
    ptrs = gs.node_ptr.numpy(), gs.edge_ptr.numpy()
    node_id[3] = native.num_ids
    with pytest.raises(ValueError, match="node_id spans"):
        native.logits_arrays(x, node_id, ei, ea, *ptrs)
    ei[0, 0] = 10_000
    with pytest.raises(ValueError, match="outside its graph"):
        native.logits_arrays(x, gs.node_id.numpy(), ei, ea, *ptrs)
    with pytest.raises(ValueError, match="node features"):
        native.logits_arrays(x[:, :3], gs.node_id.numpy(), gs.edge_index.numpy(), ea, *ptrs)


def test_real_rav4_windows_equal_the_model():
    from conftest import require

    require(REAL_CANDUMP.is_file(), f"real data {REAL_CANDUMP} not found")
    msgs = read_messages(REAL_CANDUMP, channel="can0", on_bad_rows="skip").slice(0, 6000)
    vocab = IdVocab.from_list(sorted(set(msgs.can_id.tolist()))[::2])  # half the IDs out of vocabulary
    gs = build_graphs(msgs, vocab, 100, 50)
    model = _model(gs)
    native = NativeGAT.from_model(model)
    ref = _reference(model, gs)
    np.testing.assert_allclose(native.logits(gs), ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
    for k in (0, 7, len(gs) - 1):  # the live path: the detector's own one-window graph
        s = 50 * k
        g = window_graph(msgs.timestamp[s:s + 100], msgs.can_id[s:s + 100], msgs.dlc[s:s + 100],
                         msgs.payload[s:s + 100], float(msgs.timestamp[s - 1]) if s else None, vocab)
        np.testing.assert_allclose(native.logits_window(g.x, g.node_id, g.edge_index, g.edge_attr), ref[k],
                                   rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


def test_detector_engines_give_the_same_scores(student_checkpoint, synthetic):
    recording = Path(synthetic.splits["test_01_known_vehicle_known_attack"].files[0])
    msgs = read_messages(recording).slice(0, 3000)
    frames = [(float(msgs.timestamp[i]), int(msgs.can_id[i]), msgs.payload[i, :int(msgs.dlc[i])].tobytes(), False)
              for i in range(len(msgs))]
    native = Detector.from_checkpoint(student_checkpoint)
    torch_det = Detector.from_checkpoint(student_checkpoint, engine="torch")
    assert (native.engine, torch_det.engine) == ("native", "torch")
    one_by_one = [d.score for d in map(native.feed, frames) if d is not None]
    batch = [d.score for d in torch_det.feed_many(msgs)]
    assert len(one_by_one) == len(batch) == 30
    np.testing.assert_allclose(one_by_one, batch, rtol=0, atol=1e-6)
    assert (native.stats()["engine"], native.stats()["batch_engine"]) == ("native", "native")
    assert torch_det.batch_engine == "torch"
    np.testing.assert_allclose([d.score for d in native.clone().feed_many(msgs)], batch, rtol=0, atol=1e-6)


def test_detector_engine_errors(student_checkpoint, synthetic, tmp_path):
    from kdkit.config import make_config
    from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES
    from kdkit.training.checkpoint import CHECKPOINT_FORMAT
    from kdkit.workflows.run import build_student_or_teacher

    with pytest.raises(ValueError, match="engine='package'"):
        Detector.from_checkpoint(student_checkpoint, engine="package")
    cfg = make_config(model="vgae", type="student", dataset="synthetic", precision="32-true")
    model = build_student_or_teacher(cfg, synthetic)
    path = tmp_path / "vgae.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                "train_config": cfg.to_dict(), "vocab": synthetic.vocab.to_list(), "node_features": list(NODE_FEATURES),
                "edge_features": list(EDGE_FEATURES), "threshold": 1.0}, path)
    assert Detector.from_checkpoint(path).engine == "torch"  # auto: the model's own path
    with pytest.raises(ValueError, match="native engine cannot run a 'vgae' model"):
        Detector.from_checkpoint(path, engine="native")


def test_export_writes_native_weights_the_detector_uses(exported_student, synthetic, tmp_path):
    checkpoint, package, result = exported_student
    weights = package.with_suffix(".npz")
    assert result["native_weights"] == str(weights) and weights.is_file()
    assert json.loads(package.with_suffix(".json").read_text())["native_weights"] == weights.name
    recording = Path(synthetic.splits["test_01_known_vehicle_known_attack"].files[0])
    msgs = read_messages(recording).slice(0, 2000)
    frames = [(float(msgs.timestamp[i]), int(msgs.can_id[i]), msgs.payload[i, :int(msgs.dlc[i])].tobytes(), False)
              for i in range(len(msgs))]
    native, package_det = Detector.from_exported(package), Detector.from_exported(package, engine="package")
    assert (native.engine, package_det.engine, native.batch_engine) == ("native", "package", "package")
    from kdkit.stream import replay_file

    assert "engine package)" in replay_file(native.clone(), recording, max_messages=500).format()  # blocks
    assert "engine native)" in replay_file(native.clone(), recording, realtime=True, max_messages=300).format()
    a = [d.score for d in map(native.feed, frames) if d is not None]
    b = [d.score for d in map(package_det.feed, frames) if d is not None]
    c = [d.score for d in Detector.from_exported(package).feed_many(msgs)]  # batches: the package
    assert len(a) == len(b) == len(c) == 20
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)
    # a package exported before the weights were written: the package's direct call, or a clear error
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in (package, package.with_suffix(".json")):
        (bare / f.name).write_bytes(f.read_bytes())
    assert Detector.from_exported(bare / package.name).engine == "package"
    with pytest.raises(ValueError, match="re-export"):
        Detector.from_exported(bare / package.name, engine="native")


def test_native_weights_of_another_export_are_never_used(exported_student, synthetic, tmp_path, caplog):
    checkpoint, package, _ = exported_student
    meta = json.loads(package.with_suffix(".json").read_text())
    assert len(meta["native_weights_sha256"]) == 64
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    for f in (package, package.with_suffix(".json")):
        (gateway / f.name).write_bytes(f.read_bytes())
    gs = synthetic.splits["val"].subset(np.arange(5))
    other = NativeGAT.from_model(_model(gs, seed=7))  # a stale .npz: another model's weights, same shapes
    np.savez(gateway / "student.npz", **other.arrays())
    with pytest.raises(ValueError, match="not the one exported with"):
        Detector.from_exported(gateway / package.name)
    # metadata that names no weights (an export from before them): the .npz is ignored, with a warning
    meta.pop("native_weights"), meta.pop("native_weights_sha256"), meta.pop("scoring_sha256")
    (gateway / "student.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="kdkit.stream"):
        assert Detector.from_exported(gateway / package.name).engine == "package"
    assert "is not named by student.json" in caplog.text


def test_a_package_beside_another_exports_metadata_is_refused(exported_student, tmp_path):
    """A .pt2 copied over another (a gateway update that copied only the package, a teacher renamed
    student.pt2) ran with the other export's threshold and vocabulary, silently: the .json records
    its package's SHA-256, and the checkpoint's absolute path for the calibrate advice."""
    checkpoint, package, _ = exported_student
    meta = json.loads(package.with_suffix(".json").read_text())
    assert Path(meta["checkpoint"]).is_absolute() and Path(meta["checkpoint"]) == checkpoint.resolve()
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    for f in (package, package.with_suffix(".json"), package.with_suffix(".npz")):
        (gateway / f.name).write_bytes(f.read_bytes())
    assert Detector.from_exported(gateway / package.name).engine == "native"  # the three files of one export
    (gateway / package.name).write_bytes(package.read_bytes() + b"\0")  # another package's bytes
    with pytest.raises(ValueError, match=r"student\.pt2 is not the package student\.json was exported with "
                                         r"\(SHA-256 .*\): its threshold, window and vocabulary would be another "
                                         r"model's\. The files of two exports were mixed .* copy the files of one "
                                         r"export together \(student\.pt2, student\.json, student\.npz\), or export "
                                         r"again, kdkit export --checkpoint CHECKPOINT --out .*student\.pt2 \(student"
                                         r"\.json describes .*\)"):
        Detector.from_exported(gateway / package.name)


@pytest.mark.parametrize("stop_in", ["compile", "native weights"])
def test_an_export_stopped_midway_leaves_the_previous_export_whole(exported_student, tmp_path, monkeypatch, stop_in):
    """A re-export killed after its new .pt2 was renamed into place left it beside the previous
    export's .json (refused by the detector, with advice naming the old checkpoint): the three files
    are staged under temp names and renamed together at the end."""
    checkpoint, package, _ = exported_student
    out = tmp_path / "gateway" / "student.pt2"
    out.parent.mkdir()
    files = (package, package.with_suffix(".json"), package.with_suffix(".npz"))
    before = {}
    for f in files:
        (out.parent / f.name).write_bytes(f.read_bytes())
        before[f.name] = f.read_bytes()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if stop_in == "compile":
        monkeypatch.setattr(export_mod, "export_model", stop)
    else:  # the new package is compiled (a stand-in file), then the run stops
        monkeypatch.setattr(export_mod, "export_model", lambda model, example, path, threads=1: path.write_bytes(b"new"))
        monkeypatch.setattr(export_mod.NativeGAT, "from_model", stop)
    with pytest.raises(KeyboardInterrupt):
        export_mod.export_checkpoint(checkpoint, out)
    assert {f.name: f.read_bytes() for f in out.parent.iterdir()} == before  # nothing new, no temp file left
    assert Detector.from_exported(out).engine == "native"
