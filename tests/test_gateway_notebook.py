"""notebooks/gateway.ipynb through papermill: the stored smoke run (a quick student replaying a
simulated DoS recording: alarms on the attack bursts only) and a given model on the shared real
RAV4 candump log with ``channel``, a threshold override and no retraining. Hygiene, parameters
and nbval are checked with the other notebooks in tests/test_notebooks.py.

Run: .venv/bin/python -m pytest tests/test_gateway_notebook.py -q
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require
from test_notebooks import _check_figures, _execute, nb_env  # noqa: F401 - nb_env is a fixture used below

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


@pytest.fixture(scope="module")
def smoke_run(nb_env):  # noqa: F811 - the imported fixture
    base, env = nb_env
    out = base / "gateway"
    return out, _execute("gateway", out, env, paced_seconds=1.0)


@pytest.mark.notebook
@pytest.mark.slow
def test_gateway_notebook_alarms_on_the_simulated_attack(smoke_run):
    out, m = smoke_run
    assert m["notebook"] == "gateway" and m["source"].endswith("DoS-bravo.csv")
    assert Path(m["model"]).is_relative_to(out) and (m["window"], m["stride"], m["threshold"]) == (100, 100, 0.5)
    c = m["counts"]
    assert c["windows"] == m["summary"]["windows"] == 160 and c["attack_windows"] > 0
    assert c["detected"] > 0 and c["false_alarms"] == 0 and c["alarms"] == c["detected"]
    rows = m["tables"]["alarms"]["rows"]
    assert len(rows) == c["alarms"] and all(r["attack_share"] > 0 for r in rows)
    lat = m["latency"]
    assert lat["mode"] == "realtime replay" and lat["windows"] > 0 and 0 < lat["latency_ms_p50"] <= lat["latency_ms_p99"]
    _check_figures(out, m, {"alarm_timeline.png", "latency.png"})


@pytest.mark.notebook
@pytest.mark.slow
def test_gateway_notebook_on_the_real_candump_with_a_given_model(smoke_run, nb_env):  # noqa: F811
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    base, env = nb_env
    out = base / "gateway_rav4"
    model = smoke_run[1]["model"]
    m = _execute("gateway", out, env, model_path=model, recording=str(REAL_CANDUMP), channel="can0", threshold=0.999,
                 paced_seconds=0.5)
    assert m["model"] == model and not (out / "gat_student").exists()  # loaded, not retrained
    s = m["summary"]
    assert s["messages"] == 53_800 and s["windows"] == 538 and s["threshold"] == 0.999 and s["dropped"] == {}
    assert m["counts"] == {"windows": 538, "alarms": s["alarms"]}  # unlabelled: no attack counts
    _check_figures(out, m, {"alarm_timeline.png", "latency.png"})
