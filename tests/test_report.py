"""`sdmcl report`: runs grouped by resolved config (never by name), formats, problems, figures."""

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from sdmcl.cli import main
from sdmcl.config import parse_config
from sdmcl.report import collect_runs, group_curve, group_runs, parse_over

ROOT = Path(__file__).resolve().parents[1]


def config(name="quickstart-sdmlp", seed=0, **over):
    raw = {"name": name, "seed": seed, "data": {"source": "digits"},
           "model": {"name": "sdmlp", "neurons": 100, "k": 5, "gaba_switch_activations": 30000},
           "optim": {"name": "sgd", "lr": 0.2}, "train": {"epochs_per_task": 2, "batch_size": 32}}
    for dotted, value in over.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return parse_config(raw)


def fake_run(root: Path, cfg, final: float, tasks=(0.1, 0.2, 0.3, 0.4, 0.5), curve=None, finished=True) -> Path:
    """A run directory as the engine writes it, with chosen numbers."""
    d = root / f"{cfg.name}-{cfg.stamp()}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    E = cfg.train.epochs_per_task
    curve = curve or [final] * len(tasks)
    lines = [{"task": t, "epoch": E * (t + 1), "seen_average_accuracy": a, "task_accuracy": [a] * len(tasks)}
             for t, a in enumerate(curve)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        summary = {"name": cfg.name, "seed": cfg.seed, "final_average_accuracy": final, "forgetting": 0.5,
                   "backward_transfer": -0.5, "final_task_accuracy": list(tasks), "final_task_aware_accuracy": final,
                   "seconds_per_epoch": 0.01, "epochs": E * len(tasks)}
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def rows(out: str) -> dict[str, list[str]]:
    """label → cells of a text table (cells split on 2+ spaces)."""
    import re

    lines = out.strip().splitlines()
    result = {}
    for line in lines[2:]:
        if not line.strip() or line.startswith("not in the table"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        result[cells[0]] = cells[1:]
    return result


def test_different_lr_gives_two_rows_named_by_the_difference(tmp_path, capsys):
    fake_run(tmp_path, config(seed=0), 0.90)
    fake_run(tmp_path, config(seed=0, optim__lr=0.1), 0.60)
    assert main(["report", str(tmp_path)]) == 0
    table = rows(capsys.readouterr().out)
    assert table == {
        "quickstart-sdmlp (optim.lr=0.1)": ["1", "60.0", "50.0", "-50.0", "0.010"],  # n = 1: no ±
        "quickstart-sdmlp (optim.lr=0.2)": ["1", "90.0", "50.0", "-50.0", "0.010"],
    }


def test_runs_of_different_schedules_named_alike_are_separate_rows(tmp_path, capsys):
    # the case: 200-, 10- and 2-epoch runs with seeds {0,0,0,0,1,2} pooled as one row
    for E, seed, acc in ((200, 0, 0.90), (10, 0, 0.40), (2, 0, 0.10), (2, 1, 0.12), (2, 2, 0.14)):
        fake_run(tmp_path / "runs", config(seed=seed, train__epochs_per_task=E), acc)
    assert main(["report", str(tmp_path / "runs" / "*")]) == 0
    table = rows(capsys.readouterr().out)
    # mean of 10, 12, 14 = 12; s.e.m. = std(ddof=1) / sqrt(3) = 2 / sqrt(3) = 1.15
    assert table["quickstart-sdmlp (train.epochs_per_task=2)"][:2] == ["3", "12.0 ± 1.2"]
    assert table["quickstart-sdmlp (train.epochs_per_task=10)"][:2] == ["1", "40.0"]
    assert table["quickstart-sdmlp (train.epochs_per_task=200)"][:2] == ["1", "90.0"]
    assert list(table) == [f"quickstart-sdmlp (train.epochs_per_task={E})" for E in (2, 10, 200)]  # numeric order


def test_k_sweep_gives_one_row_per_k(tmp_path, capsys):
    for k in (10, 3, 1):
        for seed in (0, 1):
            fake_run(tmp_path, config(name="sdmlp", seed=seed, model__k=k), 0.3 + 0.01 * k + 0.02 * seed)
    assert main(["report", str(tmp_path), "--format", "csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in parsed] == ["sdmlp (model.k=1)", "sdmlp (model.k=3)", "sdmlp (model.k=10)"]
    assert [r["n"] for r in parsed] == ["2", "2", "2"] and parsed[0]["over_seed"] == "0;1"
    assert float(parsed[2]["final_avg_acc_pct_mean"]) == pytest.approx(41.0)
    assert float(parsed[2]["final_avg_acc_pct_sem"]) == pytest.approx(1.0)  # values 40, 42: sd √2, sem 1


def test_over_class_order_pools_orders_only_when_asked(tmp_path, capsys):
    fake_run(tmp_path, config(name="sdm"), 0.40)
    fake_run(tmp_path, config(name="sdm", benchmark__class_order="seeded", benchmark__class_order_seed=3), 0.50)
    fake_run(tmp_path, config(name="sdm", benchmark__class_order="seeded", benchmark__class_order_seed=15), 0.60)
    assert main(["report", str(tmp_path)]) == 0
    assert len(rows(capsys.readouterr().out)) == 3
    assert main(["report", str(tmp_path), "--over", "seed,class_order"]) == 0
    assert rows(capsys.readouterr().out) == {"sdm": ["3", "50.0 ± 5.8", "50.0 ± 0.0", "-50.0 ± 0.0", "0.010"]}
    assert parse_over("seed,class_order") == ("seed", "benchmark.class_order", "benchmark.class_order_seed")


def test_problems_are_listed_under_the_table(tmp_path, capsys):
    good = fake_run(tmp_path, config(), 0.9)
    unfinished = fake_run(tmp_path, config(seed=1), 0.9, finished=False)
    (unfinished / "checkpoints").mkdir()
    (unfinished / "checkpoints" / "last.pt").write_bytes(b"x")
    corrupt = fake_run(tmp_path, config(seed=2), 0.9)
    (corrupt / "summary.json").write_text('{"final_average_accuracy": 0.9')
    nan = fake_run(tmp_path, config(seed=3), 0.9)
    (nan / "summary.json").write_text(json.dumps({**json.loads((good / "summary.json").read_text()),
                                                   "final_average_accuracy": float("nan")}))
    copy = tmp_path / "copies" / good.name
    copy.parent.mkdir()
    copy.mkdir()
    for f in good.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert rows(out) == {"quickstart-sdmlp": ["1", "90.0", "50.0", "-50.0", "0.010"]}
    notes = out.split("not in the table (4):")[1]
    assert f"{unfinished}: unfinished or failed: no summary.json; last evaluation after epoch 10 (task 5); " \
           f"resume with `sdmcl run --resume {unfinished}`" in notes
    assert f"{corrupt}: corrupt: summary.json: not valid JSON (line 1)" in notes
    assert f"{nan}: corrupt: summary.json: final_average_accuracy is nan, not a finite number" in notes
    # the copy of a finished run is not a second seed (walk order: copies/ comes first)
    assert f"{good}: duplicate: same config and seed as {copy}; counted once" in notes

    assert main(["report", str(tmp_path), "--format", "csv"]) == 0  # CSV stays parseable: the list goes to stderr
    captured = capsys.readouterr()
    assert "not in the table" not in captured.out and "not in the table (4)" in captured.err


def test_bad_paths_and_no_finished_runs_are_one_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run directory" in capsys.readouterr().err
    fake_run(tmp_path / "runs", config(), 0.5, finished=False)
    assert main(["report", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "unfinished or failed" in err and err.strip().endswith("no finished run among " + str(tmp_path / "runs") + " (see the list above)")


def test_formats_and_per_task_columns(tmp_path, capsys):
    fake_run(tmp_path, config(seed=0), 0.40, tasks=(0.0, 0.2))
    fake_run(tmp_path, config(seed=1), 0.44, tasks=(0.0, 0.6))
    assert main(["report", str(tmp_path), "--format", "markdown", "--per-task"]) == 0
    md = capsys.readouterr().out.strip().splitlines()
    assert md[0] == "| method | n | final avg acc % | forgetting % | BWT % | s/epoch | T1 % | T2 % |"
    assert md[2] == "| quickstart-sdmlp | 2 | 42.0 ± 2.0 | 50.0 ± 0.0 | -50.0 ± 0.0 | 0.010 | 0.0 ± 0.0 | 40.0 ± 20.0 |"
    assert main(["report", str(tmp_path), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert r"quickstart-sdmlp & 2 & $42.0 \pm 2.0$ & $50.0 \pm 0.0$ & $-50.0 \pm 0.0$ & $0.010$ \\" in tex
    assert r"final avg acc \%" in tex and r"\begin{tabular}" in tex and r"\bottomrule" in tex


def test_compare_and_report_group_alike_on_real_runs(tmp_path, capsys):
    """The issue's case end to end: the quickstart at lr 0.2 and a copy at lr 0.1 are not 2 seeds."""
    other = tmp_path / "other.yaml"
    raw = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    raw["optim"]["lr"] = 0.1
    other.write_text(yaml.safe_dump(raw))
    quick = ["--set", "train.epochs_per_task=1", "--set", "model.neurons=40", "--set", "train.eval_every=0",
             "--set", "train.threads=1", "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.plots=false"]
    assert main(["compare", str(ROOT / "experiments" / "quickstart.yaml"), str(other), "--seeds", "0", "--no-progress"] + quick) == 0
    out = capsys.readouterr().out
    compared = out[out.index("method"):].strip()
    table = rows(compared)
    assert sorted(table) == ["quickstart-relu_mlp (optim.lr=0.1)", "quickstart-relu_mlp (optim.lr=0.2)",
                             "quickstart-sdmlp (optim.lr=0.1)", "quickstart-sdmlp (optim.lr=0.2)"]
    assert all(cells[0] == "1" and "±" not in cells[1] for cells in table.values())
    assert main(["report", str(tmp_path / "runs")]) == 0
    reported = rows(capsys.readouterr().out)
    assert {k: v[:4] for k, v in reported.items()} == {k: v[:4] for k, v in table.items()}  # same rows, same numbers


def test_figures_and_html(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, config(seed=0), 0.30, curve=[1.0, 0.5, 0.4, 0.35, 0.30])
    fake_run(runs, config(seed=1), 0.40, curve=[1.0, 0.7, 0.5, 0.45, 0.40])
    fake_run(runs, config(name="relu", seed=0), 0.20, curve=[1.0, 0.5, 0.33, 0.25, 0.20])
    found, _ = collect_runs([str(runs)])
    groups, _ = group_runs(found)
    curve = group_curve(next(g for g in groups if g.name == "quickstart-sdmlp"), [])
    assert curve.epochs == [2, 4, 6, 8, 10] and curve.boundaries == [2, 4, 6, 8]
    assert curve.mean[1] == pytest.approx(60.0) and curve.sem[1] == pytest.approx(10.0) and curve.n == [2] * 5
    assert main(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    rep = tmp_path / "rep"
    for name in ("table.txt", "table.md", "table.csv", "table.tex", "accuracy_over_epochs.png", "final_accuracy.png"):
        assert (rep / name).stat().st_size > 0, name
    assert (rep / "accuracy_over_epochs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (rep / "report.html").read_text()
    assert "<td>35.0 ± 5.0</td>" in page and '<img src="accuracy_over_epochs.png"' in page
    assert '<img src="final_accuracy.png"' in page and "relu" in page


def test_mean_sem_of_one_value_has_no_sem():
    from sdmcl.report import Cell, mean_sem

    assert mean_sem([5.0]) == (5.0, None) and Cell(5.0, None).text() == "5.0"
    m, s = mean_sem([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3) / 2)


def test_over_a_key_no_run_has_is_an_error(tmp_path, capsys):
    fake_run(tmp_path, config(), 0.5)
    assert main(["report", str(tmp_path), "--over", "seed,model.kk"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--over model.kk: no run's config has this key; did you mean 'model.k'?" in err


def test_config_edited_after_the_run_is_left_out(tmp_path, capsys):
    """summary.json records which config made the results; a config.yaml edited since (here the
    learning rate) no longer labels them: the run is listed as changed, not tabled under the
    new value, and reusing it is refused."""
    from sdmcl.config import config_id
    from sdmcl.errors import ConfigError
    from sdmcl.train.engine import reuse_finished
    from sdmcl.train.rundir import RunDir

    cfg = config()
    kept = fake_run(tmp_path / "runs", cfg, 0.8)
    edited = fake_run(tmp_path / "runs", config(seed=1), 0.6)
    for d, c in ((kept, cfg), (edited, config(seed=1))):
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "config_id": config_id(c.to_dict())}))
    raw = yaml.safe_load((edited / "config.yaml").read_text())
    raw["optim"]["lr"] = 0.1
    (edited / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert list(rows(out)) == ["quickstart-sdmlp"] and rows(out)["quickstart-sdmlp"][:2] == ["1", "80.0"]
    assert f"{edited}: changed: {edited / 'config.yaml'} does not match the config that made the results" in out
    reuse_finished(RunDir(kept), log=lambda s: None)  # unchanged: reused
    with pytest.raises(ConfigError, match="was edited after the run, or summary.json damaged"):
        reuse_finished(RunDir(edited), log=lambda s: None)
