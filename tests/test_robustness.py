"""Bad input gives a named, actionable error (what tests/test_graph_errors.py, test_loss.py and
test_dcl.py do not cover yet): sample shapes, bounds through make_dynamic, audio files,
damaged checkpoints/config and atomic checkpoint writes."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import slimtrain
from slimtrain import GraphError, WidthError
from slimtrain.train.checkpoint import CheckpointError, load_checkpoint, make_recipe, save_checkpoint
from slimtrain.tasks.audio import AudioError, read_audio, read_many, write_audio


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.front(x).mean(-1))


# -- input rank / shape ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (2, 3)])
def test_sample_of_the_wrong_shape_names_the_layer(shape):
    with pytest.raises(GraphError, match=rf"sample batch of shape \({shape[0]}, {shape[1]}\) does not fit the model: "
                                         r"the forward pass failed in layer '0' \(Linear\): mat1 and mat2"):
        slimtrain.make_dynamic(mlp(), torch.randn(shape))


def test_sample_of_the_wrong_rank_names_the_nested_layer():
    with pytest.raises(GraphError, match=r"in layer 'front\.0' \(Conv1d\)"):
        slimtrain.make_dynamic(Nested(), torch.randn(2, 4, 10))  # 4 channels, the conv expects 3


@pytest.mark.parametrize("sample", [torch.randn(4), torch.tensor(1.0)])
def test_sample_without_batch_axis_is_refused(sample):
    with pytest.raises(GraphError, match=r"must be a batch .*unsqueeze\(0\)"):
        slimtrain.make_dynamic(mlp(), sample)


def test_failed_trace_leaves_the_model_usable():
    m = mlp()
    with pytest.raises(GraphError):
        slimtrain.make_dynamic(m, torch.randn(3, 5))
    slimtrain.make_dynamic(m, torch.randn(3, 4))  # a corrected call works on the same model
    assert list(slimtrain.dynamic_widths(m)) == ["0.dcl", "2.dcl"]


def test_model_cost_of_a_plain_model_with_a_bad_sample():
    with pytest.raises(GraphError, match="does not fit the model"):
        slimtrain.model_cost(mlp(), torch.randn(2, 7))


# -- width bounds through make_dynamic ---------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(kappa_min=0.0), r"kappa_min must be in \(0, 1\], got 0.0"),
    (dict(kappa_min=-0.5), r"kappa_min must be in \(0, 1\]"),
    (dict(kappa_min=1.5), r"kappa_min must be in \(0, 1\], got 1.5"),
    (dict(kappa_min=float("nan")), r"kappa_min must be in \(0, 1\]"),
    (dict(min_channels=0), "at least 1 channel"),
    (dict(min_channels=-3), "at least 1 channel"),
])
def test_bad_bounds_through_make_dynamic(kwargs, match):
    m = mlp()
    with pytest.raises(WidthError, match=match):
        slimtrain.make_dynamic(m, torch.randn(3, 4), **kwargs)
    assert not any(isinstance(x, slimtrain.DynamicWidth) for x in m.modules())  # nothing half-wrapped


def test_min_channels_above_a_layer_size_keeps_that_layer_full():
    m = slimtrain.make_dynamic(mlp(), torch.randn(3, 4), min_channels=12)
    d = m.get_submodule("2.dcl")  # 8 channels < 12: pinned at its full size, not an error
    assert (d.min_width, d.max_width) == (8.0, 8.0)


# -- audio files -------------------------------------------------------------------------------------
def _tone(sr: int, seconds: float = 0.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_missing_audio_file_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"audio file not found: .*nope\.wav"):
        read_audio(tmp_path / "nope.wav")


def test_corrupt_audio_file_is_named(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(64))
    with pytest.raises(AudioError, match=r"cannot read audio file .*noise\.wav"):
        read_audio(bad)


def test_empty_audio_file_is_named(tmp_path):
    empty = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32), 8000)
    with pytest.raises(AudioError, match=r"audio file .*empty\.wav is empty \(0 samples\)"):
        read_audio(empty)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav"):
        read_audio(zero_bytes)


def test_wrong_sample_rate_is_resampled_keeping_duration_and_pitch(tmp_path):
    p = write_audio(tmp_path / "tone16k.wav", _tone(16000), 16000)
    x, sr = read_audio(p, 8000)
    assert sr == 8000 and abs(len(x) - 4000) <= 1
    spec = np.abs(np.fft.rfft(x))
    assert np.argmax(spec) * 8000 / len(x) == pytest.approx(440, abs=4)
    y, sr2 = read_audio(p)  # no rate asked: the file's own
    assert sr2 == 16000 and len(y) == 8000


def test_one_bad_file_is_skipped_with_one_counted_warning(tmp_path):
    good = [write_audio(tmp_path / f"g{i}.wav", _tone(8000, hz=300 + 100 * i), 8000) for i in range(3)]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 audio files .*broken\.wav") as rec:
        ok, skipped = read_many([good[0], bad, good[1], good[2]], 8000)
    assert len([w for w in rec if "skipped" in str(w.message)]) == 1
    assert [p for p, _ in ok] == good
    assert [p for p, _ in skipped] == [bad] and "broken.wav" in skipped[0][1]


def test_all_bad_files_abort_with_the_first_problem(tmp_path):
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    paths[1].write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: an error instead
        with pytest.raises(AudioError, match=r"no usable audio files \(tried 2\); first problem: audio file not found: .*a\.wav"):
            read_many(paths, 8000)
    with pytest.raises(AudioError, match=r"no usable audio files \(tried 0\)"):
        read_many([], 8000)


# -- damaged checkpoints / config ----------------------------------------------------------------------
def _ckpt(tmp_path: Path) -> Path:
    m = slimtrain.make_dynamic(mlp(), torch.randn(3, 4))
    return save_checkpoint(tmp_path / "m.ckpt", m, make_recipe("toy", {}, [3, 4]), extra={"note": 1})


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(b""), "cannot be read"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot be read"),
    (lambda p: p.write_text("{\"epochs\": 3}"), "cannot be read"),
    (lambda p: torch.save({"format": "other"}, p), "not a slimtrain checkpoint"),
    (lambda p: torch.save({"format": "slimtrain-checkpoint", "version": 1, "state_dict": {}, "recipe": {"task": "x", "sample_shape": [0]}}, p),
     "sample_shape"),
])
def test_damaged_checkpoints_name_the_file(tmp_path, damage, match):
    p = _ckpt(tmp_path)
    damage(p)
    with pytest.raises(CheckpointError, match=rf"m\.ckpt.*{match}|{match}.*m\.ckpt"):
        load_checkpoint(p)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    p = _ckpt(tmp_path)
    before = p.read_bytes()
    m = slimtrain.make_dynamic(mlp(), torch.randn(3, 4))

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(p, m, make_recipe("toy", {}, [3, 4]))
    assert p.read_bytes() == before  # the old checkpoint is untouched
    assert [q.name for q in tmp_path.iterdir()] == ["m.ckpt"]  # and no temp file is left


def test_resume_with_other_settings_is_refused(tmp_path):
    from slimtrain.tasks import synthetic as syn

    cfg = syn.SyntheticConfig.quick(n_train=64, n_val=32, n_test=32, hidden=8, kappa_min=1 / 8, epochs=2,
                                    batch_size=32)
    syn.train_run(cfg, 1.0, checkpoint=tmp_path / "m.ckpt", progress=False)
    other = syn.SyntheticConfig.quick(n_train=64, n_val=32, n_test=32, hidden=8, kappa_min=1 / 8, epochs=2,
                                      batch_size=32, lr=0.5)
    with pytest.raises(ValueError, match=r"cannot resume from .*m\.ckpt.*other settings \(lr\)"):
        syn.train_run(other, 1.0, checkpoint=tmp_path / "m.ckpt", progress=False, resume=True)
    with pytest.raises(ValueError, match=r"alpha=1, not 2"):
        syn.train_run(cfg, 2.0, checkpoint=tmp_path / "m.ckpt", progress=False, resume=True)
