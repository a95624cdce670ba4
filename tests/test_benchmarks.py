"""The benchmark scripts run end to end in their --quick mode and write what they promise."""

import importlib.util
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ot_cfm_2d():
    return load("ot_cfm_2d")


def test_ot_cfm_2d_quick_run_writes_the_table(ot_cfm_2d, tmp_path, monkeypatch):
    assert ot_cfm_2d.main(["--quick", "--out", str(tmp_path), "--no-timing"]) == 0
    data = json.loads((tmp_path / "ot_cfm_2d_quick.json").read_text())
    cells = {(r["task"], r["method"]) for r in data["rows"]}
    expected = {(t, m) for t in ot_cfm_2d.TASKS for m in ot_cfm_2d.METHODS
                if not (m == "FM" and t == "moons->8gaussians")}
    assert cells == expected
    assert len(data["rows"]) == 2 * len(expected)  # two seeds in quick mode
    assert all(math.isfinite(r["W2@20"]) and math.isfinite(r["NPE"]) and r["W2@20"] > 0 for r in data["rows"])
    assert all({"PE", "S"} <= set(r) for r in data["rows"])   # compare.evaluate's keys, one set everywhere
    md = (tmp_path / "ot_cfm_2d_quick.md").read_text()
    assert "| OT-CFM |" in md and "paper" in md
    assert (tmp_path / "ot_cfm_2d_quick.png").stat().st_size > 10_000
    # the report can be rewritten from the saved measurements alone, on another machine: the header names the
    # machine that measured
    (tmp_path / "ot_cfm_2d_quick.md").unlink()
    monkeypatch.setattr(platform, "node", lambda: "another-host")
    monkeypatch.setattr(platform, "processor", lambda: "another-cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 77)
    monkeypatch.setattr(torch, "__version__", "0.0-other")
    assert ot_cfm_2d.main(["--report-only", str(tmp_path / "ot_cfm_2d_quick.json")]) == 0
    assert (tmp_path / "ot_cfm_2d_quick.md").read_text() == md
    assert "another" not in md and "0.0-other" not in md


def test_ot_cfm_2d_bad_arguments(ot_cfm_2d, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        ot_cfm_2d.main(["--quick", "--out", str(tmp_path), "--methods", "2-RF"])
    assert "2-RF reflows the I-CFM model" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torchcfm", None)  # as if it were not installed
    with pytest.raises(SystemExit):
        ot_cfm_2d.main(["--quick", "--out", str(tmp_path), "--peer", "torchcfm"])
    assert "tasks.py peer" in capsys.readouterr().err
    for bad, msg in ((["--steps", "0"], "argument --steps: must be >= 1"),
                     (["--sb-tol", "0"], "argument --sb-tol: must be > 0"),
                     (["--ot-block", "-1"], "argument --ot-block: must be >= 0")):
        with pytest.raises(SystemExit):
            ot_cfm_2d.main(["--quick", "--out", str(tmp_path), *bad])
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ot_cfm_2d.main(["--report-only", str(tmp_path / "missing.json")])
    assert "--report-only: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("script, stem", [("ot_cfm_2d", "ot_cfm_2d"), ("straight_flows", "straight_flows"),
                                          ("straight_flows", "straight_flows_400steps"), ("one_step", "one_step"),
                                          ("notebook_seeds", "notebook_seeds")])
def test_committed_reports_are_their_json_rewritten(script, stem, tmp_path):
    """--report-only on a copy of a committed JSON (and its report, whose header line names the machine where the
    JSON does not) gives back the committed report."""
    results = ROOT / "benchmarks" / "results"
    for suffix in (".json", ".md"):
        shutil.copy(results / f"{stem}{suffix}", tmp_path)
    assert load(script).main(["--report-only", str(tmp_path / f"{stem}.json")]) == 0
    assert (tmp_path / f"{stem}.md").read_text() == (results / f"{stem}.md").read_text()
    assert (tmp_path / f"{stem}.json").read_bytes() == (results / f"{stem}.json").read_bytes()   # left as saved


def test_latent_vs_pixel_quick_run(tmp_path):
    lvp = load("latent_vs_pixel")
    assert lvp.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "latent_vs_pixel_quick.json").read_text())
    kinds = {(r["kind"], tuple(r["shape"])) for r in data["rows"]}
    assert kinds == {("pixel", (3, 32, 32)), ("latent", (4, 4, 4))}
    assert all(r["ms_per_step"] > 0 and r["activations_mb"] > 0 for r in data["rows"])
    assert "speed-up" in (tmp_path / "latent_vs_pixel_quick.md").read_text()


def test_straight_flows_quick_run_writes_the_table(tmp_path):
    sf = load("straight_flows")
    assert sf.main(["--quick", "--out", str(tmp_path), "--tasks", "8gaussians", "--threads", "1"]) == 0
    data = json.loads((tmp_path / "straight_flows_quick.json").read_text())
    assert {(r["method"], r["seed"]) for r in data["rows"]} == {(m, s) for m in sf.METHODS for s in (0, 1)}
    for r in data["rows"]:
        assert all(math.isfinite(r[f"W2@{n}"]) and r[f"W2@{n}"] > 0 for n in sf.STEPS)
        assert r["S"] >= 0 and r["NPE"] >= 0 and r["seconds"] > 0
    md = (tmp_path / "straight_flows_quick.md").read_text()
    assert "| learned |" in md and "| 2-RF |" in md and "target <= 0.5" in md
    assert (tmp_path / "straight_flows_quick.png").stat().st_size > 10_000
    (tmp_path / "straight_flows_quick.md").unlink()
    assert sf.main(["--report-only", str(tmp_path / "straight_flows_quick.json")]) == 0
    assert (tmp_path / "straight_flows_quick.md").read_text() == md


def test_straight_flows_targets_and_bad_arguments(tmp_path, capsys):
    sf = load("straight_flows")
    summ = {("t", "I-CFM"): {"W2@1": (4.0, 0)}, ("t", "learned"): {"W2@1": (1.9, 0), "W2@2": (1.3, 0),
                                                                   "W2@100": (1.0, 0)}}
    t = sf.targets(summ, "t")
    assert t["one_step_met"] and not t["two_step_met"] and t["one_step_ratio"] == pytest.approx(0.475)
    for bad, msg in ((["--t-max", "1.5"], "argument --t-max: must be < 1"),
                     (["--refs", "0"], "argument --refs: must be >= 1"),
                     (["--jobs", "two"], "argument --jobs: expected int, got 'two'")):
        with pytest.raises(SystemExit):
            sf.main(["--quick", "--out", str(tmp_path), *bad])
        assert msg in capsys.readouterr().err


def test_one_step_quick_run_writes_the_table(tmp_path):
    os_ = load("one_step")
    assert os_.main(["--quick", "--out", str(tmp_path), "--tasks", "8gaussians", "--variants", "MeanFlow p=0",
                     "--threads", "1"]) == 0
    data = json.loads((tmp_path / "one_step_quick.json").read_text())
    methods = {(r["method"], r["seed"]) for r in data["rows"]}
    assert methods == {(m, s) for m in (*os_.BASELINES, "MeanFlow p=0", os_.EXACT) for s in (0, 1)}
    for r in data["rows"]:
        assert all(math.isfinite(r[f"W2@{n}"]) and r[f"W2@{n}"] > 0 for n in os_.STEPS if f"W2@{n}" in r)
    md = (tmp_path / "one_step_quick.md").read_text()
    assert "| MeanFlow p=0 |" in md and "| exact u (I-CFM flow) |" in md and "target <= 1.5x" in md
    assert (tmp_path / "one_step_quick.png").stat().st_size > 10_000
    (tmp_path / "one_step_quick.md").unlink()
    assert os_.main(["--report-only", str(tmp_path / "one_step_quick.json")]) == 0
    assert (tmp_path / "one_step_quick.md").read_text() == md


def test_fashion_frechet_quick_run_writes_the_table(tmp_path, capsys):
    from lfm_core import images

    try:
        images.load("fashion_mnist", limit=1)
    except FileNotFoundError:
        pytest.skip("Debian's dataset-fashion-mnist package is not installed (tasks.py test installs it as root)")
    ff = load("fashion_frechet")
    assert ff.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fashion_frechet_quick.json").read_text())
    sets = [r["set"] for r in data["rows"]]
    assert sets == ["held-out test images", "autoencoder reconstructions", "Euler, 4 steps", "Euler, 1 step"]
    for r in data["rows"]:
        assert math.isfinite(r["fd"]) and r["fd"] >= 0 and r["nn_ratio"] > 0 and r["largest_class_share"] <= 1
    # the reconstructions are of the held-out images: closer to them than 4-step samples of a 10-step model
    fd = {r["set"]: r["fd"] for r in data["rows"]}
    assert fd["autoencoder reconstructions"] < fd["Euler, 4 steps"]
    md = (tmp_path / "fashion_frechet_quick.md").read_text()
    assert "| held-out test images |" in md and "Ranking held-out < reconstructions" in md
    (tmp_path / "fashion_frechet_quick.md").unlink()
    assert ff.main(["--report-only", str(tmp_path / "fashion_frechet_quick.json")]) == 0
    assert (tmp_path / "fashion_frechet_quick.md").read_text() == md
    with pytest.raises(SystemExit):
        ff.main(["--quick", "--n", "1"])
    assert "--n: must be >= 2" in capsys.readouterr().err


def test_one_step_baselines_targets_and_bad_arguments(tmp_path, capsys):
    os_ = load("one_step")
    cfg = os_.Config(seeds=[0, 1], tasks=["moons"])
    rows = os_.load_baselines(cfg)   # the committed measurements of benchmarks/straight_flows.py
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in os_.BASELINES for s in (0, 1)}
    with pytest.raises(ValueError, match="n_train"):
        os_.load_baselines(os_.Config(n_train=500))
    with pytest.raises(ValueError, match="seeds"):
        os_.load_baselines(os_.Config(seeds=[0, 99]))
    with pytest.raises(FileNotFoundError, match="--retrain"):
        os_.load_baselines(os_.Config(baselines=str(tmp_path / "none.json")))
    summ = {("t", "OT-CFM"): {"W2@1": (0.8, 0), "W2@100": (0.5, 0)}, ("t", "MeanFlow"): {"W2@1": (0.7, 0),
                                                                                       "W2@100": (1.0, 0)}}
    t = os_.targets(summ, "t", "MeanFlow")
    assert t["vs_ot_met"] and t["vs_best_met"] and t["ratio_best_100"] == pytest.approx(1.4)
    summ[("t", "MeanFlow")]["W2@1"] = (0.9, 0)
    t = os_.targets(summ, "t", "MeanFlow")
    assert not t["vs_ot_met"] and not t["vs_best_met"]
    with pytest.raises(SystemExit):
        os_.main(["--quick", "--out", str(tmp_path), "--meanflow-steps", "0"])
    assert "argument --meanflow-steps: must be >= 1" in capsys.readouterr().err


def test_celeba_stream_memory_quick_run(tmp_path):
    bench = load("celeba_stream_memory")
    assert bench.main(["--quick", "--sizes", "40", "120", "--work", str(tmp_path / "work"), "--out",
                       str(tmp_path)]) == 0
    data = json.loads((tmp_path / "celeba_stream_memory_quick.json").read_text())
    assert [r["images"] for r in data["rows"]] == [40, 120]
    assert all(r["rss_peak_mib"] >= r["rss_before_mib"] > 0 and r["latents_mib"] > 0 for r in data["rows"])


def test_celeba_gpu_quick_run_and_refusal_without_a_gpu(tmp_path, monkeypatch):
    bench = load("celeba_gpu")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "celeba_gpu_quick.json").read_text())
    shapes = {(r["network"], tuple(r["shape"])) for r in data["steps"]}
    assert shapes == {("unet:tiny", (4, 8, 8)), ("dit:tiny", (4, 8, 8)), ("unet:tiny", (3, 64, 64))}
    assert all(r["ms_per_step"] > 0 for r in data["steps"])
    assert data["autoencoder"]["encode_images_per_s"] > 0 and data["autoencoder"]["decode_images_per_s"] > 0
    assert data["sampling"]["nfe"] >= 6 and data["sampling"]["samples"] == 4
    assert "dopri5" in (tmp_path / "celeba_gpu_quick.md").read_text()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="measures a GPU"):
        bench.main(["--out", str(tmp_path)])


def test_celeba_gpu_full_configuration_on_stand_ins(tmp_path, monkeypatch):
    """The GPU run's settings and report, with stand-ins for the GPU and the measurements (no CUDA needed)."""
    from lfm_core import autoencoders

    bench = load("celeba_gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    monkeypatch.setattr(autoencoders, "write_standin", lambda folder, seed: None)
    monkeypatch.setattr(autoencoders, "load", lambda folder, device: type("AE", (), {"name": "stand-in ae"})())
    calls = []

    def step_cost(net, shape, batch, precision, device, repeats):
        calls.append((net, shape, batch, precision, device.type, repeats))
        oom = net.startswith("dit") and precision == "fp32"
        return {"network": net, "shape": [shape[0], shape[1], shape[1]], "batch": batch, "precision": precision,
                "params_m": 1.0, "ms_per_step": None if oom else 10.0, "peak_mib": None if oom else 100,
                "activations_mib": None if oom else 5.0}

    monkeypatch.setattr(bench, "step_cost", step_cost)
    monkeypatch.setattr(bench, "autoencoder_cost", lambda ae, size, batch, repeats, device: {
        "encode_images_per_s": 50.0, "decode_images_per_s": 40.0})
    monkeypatch.setattr(bench, "sampling_cost", lambda ae, n, latent, preset, device: {
        "samples": n, "nfe": 62, "flow_s": 3.1, "with_decoding_s": 4.0})
    assert bench.main(["--repeats", "3", "--out", str(tmp_path)]) == 0
    assert calls == [("unet:small", (4, 32), 64, "fp32", "cuda", 3), ("unet:small", (4, 32), 64, "bf16", "cuda", 3),
                     ("dit:DiT-B/2", (4, 32), 64, "fp32", "cuda", 3), ("dit:DiT-B/2", (4, 32), 64, "bf16", "cuda", 3),
                     ("unet:small", (3, 256), 64, "fp32", "cuda", 3), ("unet:small", (3, 256), 64, "bf16", "cuda", 3)]
    data = json.loads((tmp_path / "celeba_gpu.json").read_text())
    assert data["device"] == "Stand-in GPU" and data["autoencoder"]["size"] == 256
    md = (tmp_path / "celeba_gpu.md").read_text()
    assert md.splitlines()[2].startswith("Produced by `python benchmarks/celeba_gpu.py --repeats 3 --out ")
    assert " on Stand-in GPU (torch " in md and "median of 3 after 2 warm-up steps" in md
    assert "| dit:DiT-B/2 | 4x32x32 | 64 | fp32 | 1.0 | out of memory | - |" in md
    assert "## Sampling 64 latents with dopri5" in md and "NFE 62, 3.1 s for the flow" in md
    assert md == "\n".join(bench.report(data)) + "\n"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--repeats", "0"])
    assert exc.value.code == 2


def test_notebook_seeds_measures_each_asserted_comparison_per_seed(tmp_path, capsys):
    """A two-cell notebook run with two seeds: its comparisons are recorded with their margins, per loop pass,
    a failing seed is reported (its values still recorded), and other asserts are left alone."""
    import nbformat

    ns = load("notebook_seeds")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from lfm_core import runtime\nSEED = runtime.seed()\nx = 0.4 + SEED"),
                nbformat.v4.new_code_cell("for k in (1, 2):\n    assert x < 0.5 * k, 'x is small'  # comment\n"
                                          "assert isinstance(x, float)\nassert 0 < x and x <= 2")]
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    runs = [dict(ns.run_notebook(path, seed, timeout=60), notebook=path.name) for seed in (0, 1)]
    assert runs[0]["error"] is None and "AssertionError: x is small" in runs[1]["error"]
    result = ns.summarise(runs)[path.name]
    rows = result["comparisons"]
    assert set(rows) == {"cell 1, assert 1, pass 1", "cell 1, assert 1, pass 2",
                         "cell 1, assert 2, part 1", "cell 1, assert 2, part 2"}
    first = rows["cell 1, assert 1, pass 1"]
    assert first["assert"] == "x < 0.5 * k"
    assert first["values"]["0"][:2] == [0.4, 0.5] and math.isclose(first["values"]["0"][2], 0.2)
    assert math.isclose(first["min_margin"], (0.5 - 1.4) / 0.5)        # seed 1 failed it
    assert "1" not in rows["cell 1, assert 1, pass 2"]["values"]       # the failing pass stopped the cell
    assert rows["cell 1, assert 2, part 2"]["op"] == "<="
    data = {"commands": [{"command": "c", "date": "2026-01-01", "machine": "test"}], "seeds": [0, 1], "torch": "x",
            "results": ns.summarise(runs), "runs": runs}
    text = ns.report(data)
    assert "seed 1: FAILED (AssertionError: x is small)" in text and "| -0.9 | -180.0% |" in text
    # --merge: a rerun of the notebook replaces its runs and keeps the other notebooks'
    other = dict(runs[0], notebook="98_other.ipynb")
    rerun = dict(runs[0], seed=2)
    merged = ns.merge(dict(data, runs=[*runs, other]),
                      {"commands": [{"command": "d", "date": "2026-01-02", "machine": "test"}], "seeds": [2],
                       "torch": "y", "runs": [rerun]})
    assert [(r["notebook"], r["seed"]) for r in merged["runs"]] == [("98_other.ipynb", 0), (path.name, 2)]
    assert merged["seeds"] == [0, 1, 2] and [c["command"] for c in merged["commands"]] == ["c", "d"]
    assert list(merged["results"][path.name]["seeds"]) == ["2"]


def test_notebook_seeds_instrument_margin_and_bad_arguments(tmp_path, capsys):
    ns = load("notebook_seeds")
    source, claims = ns.instrument("a = 1\nassert 0.9 < a < 2 * a\nassert torch.allclose(a, a)", 3)
    assert claims == {"cell 3, assert 1": "0.9 < a < 2 * a"}
    assert "_lfm_record('cell 3, assert 1', [(0.9, '<', a), (a, '<', 2 * a)])" in source
    assert ns.instrument("%matplotlib inline\nassert a < 1", 0) == ("%matplotlib inline\nassert a < 1", {})
    assert ns.instrument("print(1)", 0) == ("print(1)", {})
    assert ns.margin(0.4, "<", 0.5) == pytest.approx(0.2) and ns.margin(3.0, ">", 2.0) == pytest.approx(0.5)
    assert ns.margin(1.0, "<=", 0.0) == float("-inf")
    for bad, msg in ((["--seeds", "1", "1"], "--seeds must be distinct"),
                     (["--seeds", "-1"], "argument --seeds: must be >= 0"),
                     (["no-such-notebook"], "no notebook matches"),
                     (["--report-only", str(tmp_path / "missing.json")], "--report-only: no such file")):
        with pytest.raises(SystemExit) as exc:
            ns.main([*bad, "--out", str(tmp_path)])
        assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_input_audit_quick_run(tmp_path):
    """The audit's small subset: every call's valid arguments run, every case gets an outcome, and the report lists
    each case that is not clear; --report-only rewrites the same report from the JSON."""
    audit = load("input_audit")
    assert audit.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "input_audit_quick.json").read_text())
    rows = audit.cases_of(data)
    assert {r["module"] for r in rows} == set(audit.QUICK_MODULES)
    assert all(r["outcome"] == "ok" for r in rows if r["baseline"])
    bad = [r for r in rows if not r["baseline"] and not r["ambiguous"]]
    assert len(bad) >= 50 and all(r["outcome"] in audit.OUTCOMES for r in bad)
    md = (tmp_path / "input_audit_quick.md").read_text()
    assert "| kind | clear | vague | unclear | silent | hang | crash |" in md
    assert all(f"| {audit._cell(r['value'])} |" in md for r in bad if r["outcome"] != "clear")
    (tmp_path / "input_audit_quick.md").unlink()
    assert audit.main(["--report-only", str(tmp_path / "input_audit_quick.json")]) == 0
    assert (tmp_path / "input_audit_quick.md").read_text() == md
