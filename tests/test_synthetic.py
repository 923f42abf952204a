"""The synthetic case study (quick settings) and checkpoints that rebuild their model."""
from __future__ import annotations

import csv
import math

import pytest
import torch

import slimtrain
from slimtrain.train.checkpoint import (CheckpointError, load_checkpoint, load_dynamic_model, make_recipe,
                                  register_task, save_checkpoint)
from slimtrain.tasks import synthetic as syn

QUICK = syn.SyntheticConfig.quick()


def _spearman(xs, ys) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    rows = syn.run_sweep(QUICK, alphas=(0.0, 0.3, 1.0, 8.0), baseline_widths=(2, 8, QUICK.hidden),
                         out_dir=out, workers=1, progress=False)
    return out, rows


def _learned(rows):
    return sorted((r for r in rows if r["method"] == "learned"), key=lambda r: r["alpha"])


# -- the problem -----------------------------------------------------------------------------------
def test_data_is_deterministic_and_seeded():
    a, b = syn.make_data(QUICK), syn.make_data(QUICK)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.x_train.shape == (QUICK.n_train, QUICK.in_dim) and a.y_test.shape == (QUICK.n_test, QUICK.out_dim)
    c = syn.make_data(syn.SyntheticConfig.quick(seed=1))
    assert not torch.equal(a.y_train, c.y_train)


def test_teacher_has_h_true_units_unit_variance_and_known_noise_floor():
    t = syn.make_teacher(QUICK)
    assert t[0].out_features == QUICK.h_true and t[2].in_features == QUICK.h_true
    x = torch.randn(20000, QUICK.in_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = t(x)
        pre = t[0](x)
    assert float(y.var(0).mean()) == pytest.approx(1.0, abs=0.05)
    assert float(y.var(0).min()) > 0.2  # no output is (nearly) constant
    # the units are in tanh's non-linear range (not a linear map a smaller student could copy)
    assert pre.std(0).min() > 1.5
    # every unit feeds the output equally strongly
    norms = t[2].weight.norm(dim=0)
    assert float(norms.max() / norms.min()) == pytest.approx(1.0, abs=1e-5)
    data = syn.make_data(QUICK)
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(t(data.x_test), data.y_test))
    assert data.nmse(mse) == pytest.approx(QUICK.noise_floor, rel=0.15)


def test_config_rejects_bad_values():
    for kw, word in [({"epochs": 0}, "epochs"), ({"kappa_min": 0.0}, "kappa-min"), ({"kappa_min": 1.5}, "kappa-min"),
                     ({"hidden": 8, "kappa_min": 0.01}, "kappa-min"), ({"lr": -1.0}, "lr"),
                     ({"batch_size": 10**6}, "batch-size")]:
        with pytest.raises(ValueError, match=word):
            syn.SyntheticConfig.quick(**kw).validate()
    with pytest.raises(ValueError, match="alpha"):
        syn.train_run(QUICK, -0.5, progress=False)
    with pytest.raises(ValueError, match="learned-width"):
        syn.train_run(QUICK, None, width=4, checkpoint="x.ckpt", progress=False)


# -- the sweep -------------------------------------------------------------------------------------
def test_alpha_zero_keeps_the_full_width(sweep):
    _, rows = sweep
    r0 = _learned(rows)[0]
    assert r0["alpha"] == 0.0
    assert r0["width"] >= 0.75 * QUICK.hidden
    # and training with the DCL at full width is the plain model's training
    plain = next(r for r in rows if r["method"] == "fixed" and r["width"] == QUICK.hidden)
    assert r0["test_nmse"] == pytest.approx(plain["test_nmse"], rel=0.05)


def test_large_alpha_shrinks_to_about_h_true_or_below(sweep):
    _, rows = sweep
    big = _learned(rows)[-1]
    assert 0 < big["width"] <= 2 * QUICK.h_true
    assert big["width_continuous"] >= QUICK.hidden * QUICK.kappa_min - 1e-6


def test_widths_fall_as_alpha_grows(sweep):
    _, rows = sweep
    learned = _learned(rows)
    alphas = [r["alpha"] for r in learned]
    widths = [r["width_continuous"] for r in learned]
    assert _spearman(alphas, widths) <= -0.8
    assert learned[-1]["width"] <= 0.5 * learned[0]["width"]


def test_error_rises_only_when_the_width_is_small(sweep):
    _, rows = sweep
    learned = _learned(rows)
    fixed = {r["width"]: r for r in rows if r["method"] == "fixed"}
    # below h_true the error is clearly worse than with the full model ...
    below = [r for r in learned if r["width"] < QUICK.h_true]
    assert below and all(r["test_nmse"] > 5 * learned[0]["test_nmse"] for r in below)
    # ... and a fixed model much smaller than h_true is as bad as expected
    assert fixed[2]["test_nmse"] > 0.2 > fixed[QUICK.hidden]["test_nmse"]


def test_exported_cost_matches_the_model(sweep):
    _, rows = sweep
    for r in rows:
        assert r["params_exported"] == r["params"], r
        assert r["flops_exported"] == pytest.approx(r["flops"]), r
        assert r["flops"] == 2 * r["macs"]
        h = r["width"]
        assert r["macs"] == QUICK.in_dim * h + h * QUICK.out_dim
        assert r["params"] == (QUICK.in_dim + 1) * h + (h + 1) * QUICK.out_dim


def test_sweep_writes_csv_png_and_checkpoints(sweep):
    out, rows = sweep
    with open(out / "sweep.csv") as f:
        reader = csv.DictReader(f)
        table = list(reader)
        assert reader.fieldnames == syn.SWEEP_COLUMNS
    assert {"method", "alpha", "width", "macs", "flops", "params", "test_mse", "test_nmse"} <= set(reader.fieldnames)
    assert len(table) == len(rows) == 4 + 3
    assert [r["method"] for r in table].count("learned") == 4
    assert all(r["alpha"] == "" for r in table if r["method"] == "fixed")
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert (out / "config.json").exists()
    for a in ("0", "0.3", "1", "8"):  # run records carry the seed (a sweep may run several)
        assert (out / "runs" / f"widths_alpha={a}_seed{QUICK.seed}.csv").exists()
        assert (out / "runs" / f"model_alpha={a}_seed{QUICK.seed}.ckpt").exists()
    assert {r["seed"] for r in table} == {str(QUICK.seed)}
    assert len({r["data_fingerprint"] for r in table}) == 1 and all(len(r["data_fingerprint"]) == 16 for r in table)
    assert all(r["threads"] == "1" and r["torch_version"] == torch.__version__ for r in table)
    assert "| learned | 8 |" in syn.format_table(rows)


def test_runs_are_reproducible():
    cfg = syn.SyntheticConfig.quick(epochs=3, n_train=512)
    a = syn.train_run(cfg, 2.0, progress=False)
    b = syn.train_run(cfg, 2.0, progress=False)
    for k in ("width_continuous", "test_mse", "val_nmse", "flops"):
        assert a[k] == b[k], k


def test_parallel_sweep_equals_serial(tmp_path):
    cfg = syn.SyntheticConfig.quick(epochs=2, n_train=256, n_val=64, n_test=256)
    serial = syn.run_sweep(cfg, (0.0, 4.0), (3,), None, workers=1, progress=False)
    parallel = syn.run_sweep(cfg, (0.0, 4.0), (3,), None, workers=2, progress=False)
    key = ("method", "alpha", "width", "width_continuous", "test_mse")

    def table(rows):
        return [tuple(None if isinstance(r[k], float) and math.isnan(r[k]) else r[k] for k in key) for r in rows]

    assert table(serial) == table(parallel)


# -- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    syn.train_run(syn.SyntheticConfig.quick(epochs=3, n_train=512), 3.0, checkpoint=path, progress=False)
    return path


def test_checkpoint_roundtrip_rebuilds_the_model(ckpt_path):
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["recipe"]["task"] == "synthetic"
    assert ckpt["recipe"]["dynamic"]["kappa_min"] == pytest.approx(1 / 32)
    assert set(ckpt["extra"]) >= {"config", "alpha", "metric", "result"}
    model = load_dynamic_model(ckpt_path)
    assert not model.training
    assert slimtrain.dynamic_widths(model) == pytest.approx(ckpt["widths"])
    assert slimtrain.dynamic_widths(model, hard=True)["0.dcl"] == ckpt["extra"]["result"]["width"]
    data = syn.make_data(syn.SyntheticConfig(**ckpt["extra"]["config"]))
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(model(data.x_test), data.y_test))
    assert mse == pytest.approx(ckpt["extra"]["result"]["test_mse"], rel=1e-5)
    # no temporary file is left next to it
    assert [p.name for p in ckpt_path.parent.iterdir()] == ["model.ckpt"]


def test_missing_corrupt_and_foreign_checkpoints_fail_clearly(tmp_path, ckpt_path):
    with pytest.raises(CheckpointError, match="nope.ckpt.*does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt_path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.ckpt.*cannot be read"):
        load_dynamic_model(cut)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="text.ckpt.*cannot be read"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.ckpt.*not a slimtrain checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_damaged_recipe_and_unknown_task(tmp_path, ckpt_path):
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["recipe"]["task"] = "no-such-task"
    torch.save(ckpt, tmp_path / "task.ckpt")
    with pytest.raises(CheckpointError, match="task.ckpt.*no builder registered for task 'no-such-task'"):
        load_dynamic_model(tmp_path / "task.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["state_dict"]["0.module.weight"] = torch.zeros(2, 2)
    torch.save(ckpt, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="shape.ckpt.*does not fit"):
        load_dynamic_model(tmp_path / "shape.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["recipe"]["sample_shape"]
    torch.save(ckpt, tmp_path / "recipe.ckpt")
    with pytest.raises(CheckpointError, match="recipe.ckpt.*sample_shape"):
        load_checkpoint(tmp_path / "recipe.ckpt")


def test_register_task_rebuilds_a_custom_model(tmp_path):
    def build(recipe):
        kw = recipe["kwargs"]
        m = torch.nn.Sequential(torch.nn.Linear(3, kw["h"]), torch.nn.ReLU(), torch.nn.Linear(kw["h"], 2))
        return slimtrain.make_dynamic(m, torch.randn(*recipe["sample_shape"]), **recipe["dynamic"])

    register_task("test-custom", build)
    recipe = make_recipe("test-custom", {"h": 10}, (4, 3), {"min_channels": 2})
    model = build(recipe)
    next(iter(m for m in model.modules() if isinstance(m, slimtrain.DynamicWidth))).set_width(3.5)
    save_checkpoint(tmp_path / "c.ckpt", model, recipe, {"note": "hi"})
    back = load_dynamic_model(tmp_path / "c.ckpt")
    assert slimtrain.dynamic_widths(back, hard=True) == {"0.dcl": 4.0}
    x = torch.randn(5, 3)
    assert torch.equal(back(x), model.eval()(x))
    assert load_checkpoint(tmp_path / "c.ckpt")["extra"] == {"note": "hi"}
    with pytest.raises(CheckpointError, match="task"):
        save_checkpoint(tmp_path / "d.ckpt", model, {"kwargs": {}})
