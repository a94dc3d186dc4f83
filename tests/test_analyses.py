"""`sdmcl analyze`: the toy model's update sizes and SDM's geometry against hand computation,
and every analysis end to end on small runs of the offline digits data."""

import csv
import json
import math
from itertools import product

import numpy as np
import pytest

from sdmcl.analysis.attention import circle_intersection, fit_exponential, hamming_radius, sdm_pattern_weight
from sdmcl.analysis.common import spearman
from sdmcl.analysis.stale_momentum import silence_measures, silence_schedule, toy_updates
from sdmcl.cli import main
from sdmcl.config import parse_config
from sdmcl.train.engine import run

# ---------------------------------------------------------------- the toy model, by hand

G = 0.2


def test_sgd_moves_a_silent_weight_not_at_all():
    u = toy_updates("sgd", silence_schedule(G, 2, 5), lr=0.05)
    assert np.allclose(u, [0.05 * G] * 2 + [0.0] * 5 + [0.05 * G], rtol=0, atol=1e-15)


def test_sgdm_keeps_moving_a_silent_weight_by_the_decaying_momentum():
    # torch's heavy ball: b1 = g, b_t = 0.9 b_{t-1} + g_t; the update is lr·b_t
    u = toy_updates("sgdm", silence_schedule(G, 2, 5))
    b2 = 1.9 * G
    assert u[:2] == pytest.approx([G, b2])
    assert u[2:7] == pytest.approx([b2 * 0.9**s for s in range(1, 6)])  # silent steps still move
    assert u[7] == pytest.approx(b2 * 0.9**6 + G)
    stale, react = silence_measures("sgdm", G, 2, 48)
    assert stale == pytest.approx(sum(b2 * 0.9**s for s in range(1, 49)))  # 3.398
    assert react == pytest.approx(b2 * 0.9**49 + G)


def test_adam_and_rmsprop_updates_by_hand():
    # Adam (torch defaults): m, v with bias correction by the step count t
    def adam(grads, b1=0.9, b2=0.999, eps=1e-8):
        m = v = 0.0
        out = []
        for t, g in enumerate(grads, 1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            out.append((m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps))
        return out

    grads = silence_schedule(G, 2, 48)
    assert toy_updates("adam", grads) == pytest.approx(adam(grads), rel=1e-9)
    assert toy_updates("adam", grads)[0] == pytest.approx(1.0, rel=1e-6)  # the first step is lr·sign(g)
    # RMSProp (alpha 0.99, no momentum): a silent weight does not move, then spikes
    u = toy_updates("rmsprop", grads)
    assert np.all(u[2:50] == 0.0)
    v2 = 0.01 * G**2 * 0.99 + 0.01 * G**2
    v = 0.99**48 * v2 * 0.99 + 0.01 * G**2
    assert u[-1] == pytest.approx(G / (math.sqrt(v) + 1e-8), rel=1e-9)  # 6.717: ~34 plain-SGD steps
    assert u[-1] / G > 30


def test_the_toy_ordering_of_optimizers():
    """Per unit learning rate after 48 silent steps: moved while silent SGD = RMSProp = 0 <
    SGDM < Adam; step at re-activation SGD ≈ SGDM < Adam < RMSProp."""
    m = {n: silence_measures(n, G, 2, 48) for n in ("sgd", "sgdm", "adam", "rmsprop")}
    assert m["sgd"][0] == 0 == m["rmsprop"][0] < m["sgdm"][0] < m["adam"][0]
    assert m["sgd"][1] == pytest.approx(G) and m["sgdm"][1] == pytest.approx(G, rel=0.02)
    assert m["sgdm"][1] < m["adam"][1] < m["rmsprop"][1]


# ---------------------------------------------------------------- SDM geometry and fits


def test_circle_intersection_matches_enumeration():
    n = 6
    points = list(product((0, 1), repeat=n))
    for r, d in product(range(n + 1), range(n + 1)):
        a = (0,) * n
        b = (1,) * d + (0,) * (n - d)
        brute = sum(1 for p in points if sum(p) <= r and sum(x != y for x, y in zip(p, b)) <= r)
        assert circle_intersection(n, r, d) == brute, (r, d)
    assert hamming_radius(6, 1 / 64) == 0 and hamming_radius(6, 7 / 64) == 1 and hamming_radius(6, 8 / 64) == 2
    w = sdm_pattern_weight(np.array([1.0, 0.5, -1.0]), 64, 24)
    assert w[0] == 1.0 and 0 < w[1] < 1 and w[2] == 0.0  # opposite corners share no point within r < n/2


def test_exponential_fit_and_rank_correlation():
    x = np.linspace(0, 1, 11)
    beta, b, r2 = fit_exponential(x, 3.0 * np.exp(7.0 * x))
    assert beta == pytest.approx(7.0) and b == pytest.approx(math.log(3.0)) and r2 == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [10, 20, 15, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------- end to end on small runs


def base_raw(out, name, **over):
    raw = {
        "name": name,
        "data": {"source": "digits"},
        "model": {"name": "sdmlp", "neurons": 64, "k": 4, "gaba_switch_activations": 300},
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs_per_task": 2, "batch_size": 64, "eval_every": 1, "threads": 1},
        "benchmark": {"num_tasks": 2},
        "output": {"dir": str(out), "progress": False, "plots": False},
    }
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    inv = {"activations_every": 1, "receptive_fields": 4}
    dirs = {}
    for name, over in {
        "sdmlp": {"investigate": {**inv, "update_norms": True}, "optim": {"name": "sgdm", "lr": 0.05}},
        "relu": {"model": {"name": "relu_mlp", "neurons": 64}, "investigate": inv},
        "k2": {"model": {"name": "sdmlp", "neurons": 64, "k": 2, "gaba_switch_activations": 300}},
        "k2-joint": {"model": {"name": "sdmlp", "neurons": 64, "k": 2, "gaba_switch_activations": 300},
                     "benchmark": {"joint": True}},
        "k8": {"model": {"name": "sdmlp", "neurons": 64, "k": 8, "gaba_switch_activations": 300}},
    }.items():
        rd, _ = run(parse_config(base_raw(out / name, name, **over)), log=lambda s: None)
        dirs[name] = rd.path
    return dirs


def analyze(capsys, *args):
    code = main(["analyze", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_neurons_analysis(runs, tmp_path, capsys):
    code, out, _ = analyze(capsys, "neurons", runs["sdmlp"], runs["relu"], "--out", tmp_path)
    assert code == 0, out
    for f in ("neurons_over_time.png", "class_entropy.png", "activation_counts.png", "neurons_summary.csv", "class_entropy.csv"):
        assert (tmp_path / f).is_file(), f
    summary = {r["run"]: r for r in read_csv(tmp_path / "neurons_summary.csv")}
    snap = np.load(sorted((runs["relu"] / "investigations" / "activations").glob("*.npz"))[-1])
    per_neuron = snap["train_counts"].sum(0)
    assert float(summary["relu"]["alive_train"]) == pytest.approx((per_neuron > 0).mean(), rel=1e-5)
    assert float(summary["relu"]["max_entropy_ln_classes"]) == pytest.approx(math.log(4), rel=1e-5)  # 2 tasks × 2 classes seen
    over_time = read_csv(tmp_path / "neurons_over_time.csv")
    assert len(over_time) == 2 * 2 * 4  # 2 runs × 4 snapshots × (train, test)
    assert "alive (train)" in out


def test_stale_momentum_analysis(runs, tmp_path, capsys):
    code, out, _ = analyze(capsys, "stale-momentum", runs["sdmlp"], "--out", tmp_path)
    assert code == 0, out
    toy = read_csv(tmp_path / "stale_momentum_silence.csv")
    assert float(toy[47]["rmsprop_reactivation_update_per_lr"]) == pytest.approx(6.717, abs=1e-3)  # 48 silent steps
    inside = read_csv(tmp_path / "stale_momentum_runs.csv")
    assert inside[0]["optimizer"] == "sgdm" and float(inside[0]["mean_norm_inactive"]) > 0
    assert (tmp_path / "stale_momentum_runs.png").is_file()
    # without runs: the toy model alone
    code, out, _ = analyze(capsys, "stale-momentum", "--out", tmp_path / "toy")
    assert code == 0 and (tmp_path / "toy" / "stale_momentum_toy.png").is_file()


def test_k_frontier_pairs_pretraining_and_continual_runs(runs, tmp_path, capsys):
    code, out, _ = analyze(capsys, "k-frontier", runs["k2"], runs["k2-joint"], runs["k8"], "--out", tmp_path)
    assert code == 0, out
    rows = {int(r["k"]): r for r in read_csv(tmp_path / "k_frontier.csv")}
    joint = json.loads((runs["k2-joint"] / "summary.json").read_text())["final_average_accuracy"]
    cont = json.loads((runs["k2"] / "summary.json").read_text())["final_average_accuracy"]
    assert float(rows[2]["pretrain_accuracy"]) == pytest.approx(joint)
    assert float(rows[2]["continual_accuracy"]) == pytest.approx(cont)
    assert rows[8]["pretrain_accuracy"] == ""  # no pretraining run for k = 8
    assert (tmp_path / "k_frontier.png").is_file()


def test_k_frontier_reads_the_pretraining_run_of_init_from(runs, tmp_path, capsys):
    pre = runs["k2-joint"]
    raw = base_raw(tmp_path / "r", "from-pre", model={"name": "sdmlp", "neurons": 64, "k": 2, "gaba_switch_activations": 300},
                   init_from=str(pre / "model.pt"))
    rd, _ = run(parse_config(raw), log=lambda s: None)
    code, out, _ = analyze(capsys, "k-frontier", rd.path, "--out", tmp_path / "a")
    assert code == 0, out
    (row,) = read_csv(tmp_path / "a" / "k_frontier.csv")
    assert float(row["pretrain_accuracy"]) == pytest.approx(json.loads((pre / "summary.json").read_text())["final_average_accuracy"])


def test_gaba_timing_analysis(runs, tmp_path, capsys):
    code, out, _ = analyze(capsys, "gaba-timing", runs["sdmlp"], runs["k2"], "--out", tmp_path)
    assert code == 0, out
    (row,) = read_csv(tmp_path / "gaba_timing.csv")  # both runs have T = 300
    assert row["gaba_switch_activations"] == "300" and row["runs"] == "2"
    assert float(row["never_active"]) >= 0  # the sdmlp run has snapshots
    assert (tmp_path / "gaba_timing.png").is_file()


def test_attention_and_receptive_fields(runs, tmp_path, capsys):
    code, out, _ = analyze(capsys, "attention", runs["sdmlp"], runs["relu"], "--out", tmp_path, "--samples", 100)
    assert code == 0, out
    fit = {r["run"]: r for r in read_csv(tmp_path / "attention_fit.csv")}
    assert float(fit["sdmlp"]["active_per_input"]) == pytest.approx(4, abs=1.5)  # k = 4 after the switch
    assert float(fit["relu"]["active_per_input"]) > 8
    assert (tmp_path / "attention.png").is_file()
    code, out, _ = analyze(capsys, "receptive-fields", runs["sdmlp"], "--out", tmp_path, "--neurons", 3)
    assert code == 0, out
    rows = read_csv(tmp_path / "receptive_fields.csv")
    assert [r["group"] for r in rows] == ["most_used"] * 3 + ["least_used"] * 3
    assert len(read_csv(tmp_path / "receptive_fields_addresses.csv")[0]) == 4 + 64  # 8×8 digits
    assert (tmp_path / "receptive_fields_sdmlp.png").is_file()


def test_bad_input_gives_one_line_and_exit_2(runs, tmp_path, capsys):
    code, _, err = analyze(capsys, "neurons", runs["k2"], "--out", tmp_path)
    assert code == 2 and "investigate.activations_every" in err and "Traceback" not in err
    code, _, err = analyze(capsys, "neurons", tmp_path / "missing")
    assert code == 2 and "no such run directory" in err
    code, _, err = analyze(capsys, "neurons", runs["sdmlp"], "--epoch", 99, "--out", tmp_path)
    assert code == 2 and "no activation snapshot at epoch 99" in err
    code, _, err = analyze(capsys, "receptive-fields", runs["sdmlp"], "--image-shape", "5x5", "--out", tmp_path)
    assert code == 2 and "64" in err
    code, _, err = analyze(capsys, "k-frontier", runs["relu"], "--out", tmp_path)
    assert code == 2 and "no k" in err
    # a good run followed by one that lacks the data: nothing is written for either
    code, _, err = analyze(capsys, "receptive-fields", runs["sdmlp"], runs["k2"], "--out", tmp_path)
    assert code == 2 and "activations_every" in err
    code, _, err = analyze(capsys, "stale-momentum", runs["sdmlp"], runs["relu"], "--out", tmp_path)
    assert code == 2 and "investigate.update_norms=true" in err
    assert not list(tmp_path.iterdir())  # nothing half-written
