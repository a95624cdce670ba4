"""benchmarks/common.py: the flags, command line, header and report files every benchmark script shares."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402


def test_parser_has_the_shared_flags():
    p = common.parser("First line.\n\nMore.")
    assert p.description == "First line."
    args = p.parse_args([])
    assert args.quick is False and args.out == common.RESULTS == ROOT / "benchmarks" / "results"
    assert args.report_only is None
    args = p.parse_args(["--quick", "--out", "/tmp/x", "--report-only", "a.json"])
    assert args.quick and args.out == Path("/tmp/x") and args.report_only == Path("a.json")
    bare = common.parser("Doc.", quick=None, report_only=False)
    assert not hasattr(bare.parse_args([]), "quick") and not hasattr(bare.parse_args([]), "report_only")


@pytest.mark.parametrize("flag, kind, bounds, value, expected", [
    ("--refs", int, dict(minimum=1), "3", 3),
    ("--refs", int, dict(minimum=1), "1", 1),
    ("--t-max", float, dict(above=0, below=1), "0.5", 0.5),
])
def test_number_accepts_values_within_bounds(flag, kind, bounds, value, expected):
    p = common.parser("Doc.")
    p.add_argument(flag, type=common.number(kind, **bounds))
    got = getattr(p.parse_args([flag, value]), flag[2:].replace("-", "_"))
    assert got == expected and type(got) is kind


@pytest.mark.parametrize("flag, kind, bounds, value, message", [
    ("--refs", int, dict(minimum=1), "0", "argument --refs: must be >= 1, got 0"),
    ("--refs", int, dict(minimum=1), "2.5", "argument --refs: expected int, got '2.5'"),
    ("--t-max", float, dict(above=0, below=1), "0", "argument --t-max: must be > 0, got 0.0"),
    ("--t-max", float, dict(above=0, below=1), "1", "argument --t-max: must be < 1, got 1.0"),
    ("--t-max", float, dict(above=0, below=1), "x", "argument --t-max: expected float, got 'x'"),
])
def test_number_errors_name_the_flag(flag, kind, bounds, value, message, capsys):
    p = common.parser("Doc.")
    p.add_argument(flag, type=common.number(kind, **bounds))
    with pytest.raises(SystemExit) as exc:
        p.parse_args([flag, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_override_copies_only_the_flags_given():
    from types import SimpleNamespace

    cfg = SimpleNamespace(steps=10, seeds=[0], lr=1.0)
    common.override(cfg, SimpleNamespace(steps=5, seeds=None, lr=0.0), ("steps", "seeds", "lr"))
    assert (cfg.steps, cfg.seeds, cfg.lr) == (5, [0], 0.0)   # 0.0 is a value: only None means "not given"


def test_command_quotes_the_script_and_its_arguments(monkeypatch):
    assert common.command("/any/where/x.py", ["--quick", "--out", "/tmp/o"]) == \
        "python benchmarks/x.py --quick --out /tmp/o"
    assert common.command("x.py", []) == "python benchmarks/x.py"
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--jobs", "2"])
    assert common.command("x.py") == "python benchmarks/x.py --jobs 2"


def test_machine_and_produced_by():
    m = common.machine()
    assert set(m) == {"host", "processor", "arch", "python"} and all(m.values())
    assert common.produced_by("python benchmarks/x.py") == "Produced by `python benchmarks/x.py`."
    assert common.produced_by("c", "vm", ["x86_64", "torch 2.0"], 48.66) == \
        "Produced by `c` on vm (x86_64, torch 2.0) in 48.7 minutes."
    assert common.produced_by("c", details=["x86_64"]) == "Produced by `c` (x86_64)."


def test_log_prints_at_once(capsys):
    common.log("step 1")
    assert capsys.readouterr().out == "step 1\n"


def test_save_writes_the_report_files(tmp_path):
    plt = common.pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    md = common.save(tmp_path / "new", "bench", ["# Title", "", "text"], {"rows": [1, 2]}, fig)
    assert md == tmp_path / "new" / "bench.md" and md.read_text() == "# Title\n\ntext\n"
    assert (tmp_path / "new" / "bench.json").read_text() == '{\n "rows": [\n  1,\n  2\n ]\n}\n'
    assert (tmp_path / "new" / "bench.png").stat().st_size > 1000
    assert not plt.get_fignums()   # the figure is closed
    (tmp_path / "new" / "bench.json").write_text("saved")
    common.save(tmp_path / "new", "bench", ["rewritten"])   # a report rewritten from its JSON leaves the JSON alone
    assert md.read_text() == "rewritten\n" and (tmp_path / "new" / "bench.json").read_text() == "saved"


def test_load_reads_saved_measurements_with_their_header(tmp_path):
    p = common.parser("Doc.")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"command": "c", "rows": [], "produced_by": "Produced by `c` on vm."}))
    assert common.load(path, p)["produced_by"] == "Produced by `c` on vm."
    # a JSON without its header line: the header of the report written with it names the machine
    path.write_text(json.dumps({"command": "c", "rows": [], "torch": "2.0", "wall_seconds": 120}))
    path.with_suffix(".md").write_text("# Bench\n\nProduced by `c` on vm (x86_64) in 2.0 minutes.\n\ntext\n")
    assert common.load(path, p)["produced_by"] == "Produced by `c` on vm (x86_64) in 2.0 minutes."
    # ... and without that report, a header that says the machine is not recorded, not this machine's name
    path.with_suffix(".md").unlink()
    assert common.load(path, p)["produced_by"] == \
        "Produced by `c` on a machine its JSON does not record (torch 2.0) in 2.0 minutes."
    path.write_text(json.dumps({"commands": [], "rows": []}))   # no command: no header to add
    assert "produced_by" not in common.load(path, p, keys=("commands",))


@pytest.mark.parametrize("content, message", [
    (None, "--report-only: no such file"),
    ("{not json", "--report-only: cannot read"),
    ('{"command": "c"}', "has no rows: not the JSON of this benchmark"),
    ("[1, 2]", "has no command, rows"),
])
def test_load_errors_name_the_flag(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        common.load(path, common.parser("Doc."))
    assert exc.value.code == 2 and message in capsys.readouterr().err
