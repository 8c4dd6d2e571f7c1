"""Full disks, damaged stores and checkpoints, non-finite features: each a clear error naming the file or
image, and nothing half-written that looks complete."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from captioner.data.demo import generate
from captioner.training.trainer import Trainer, TrainingError
from features.store.reader import FeatureStore
from tests.faults.helpers import clean_error, extract_command, run_in_process
from tests.training_helpers import HPARAMS, train_command


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=3, num_train=20, num_val=2, num_test=2)
    return out


def extract(demo: Path, out: Path) -> list[str]:
    return extract_command(demo / "dataset_coco.json", demo, out)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs: a real full disk (needs root and mount rights, as in CI)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_is_refused_before_any_image_is_read(demo, small_tmpfs):
    out = small_tmpfs / "grid.h5"
    result = subprocess.run(extract(demo, out), capture_output=True, text=True, check=False)
    line = clean_error(result, str(out), "MiB are free")
    assert "24 images" in line
    assert list(small_tmpfs.iterdir()) == []  # nothing written, nothing that looks complete


def test_disk_filling_up_midway_fails_the_rule_and_the_rerun_resumes(demo, tmp_path):
    out = tmp_path / "grid.h5"
    limit = 300_000  # bytes: the size-limited file fills up after a few batches (the store needs ~800 kB)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(extract(demo, out), capture_output=True, text=True, check=False,
                            preexec_fn=limit_file_size)
    clean_error(result, ".grid.h5.partial", "writing features failed", "disk full", native_noise_before=True)
    assert not out.exists()  # only the partial file, under a name that is not the output's
    assert (tmp_path / ".grid.h5.partial").stat().st_size <= limit

    resumed = subprocess.run(extract(demo, out), capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    fresh = tmp_path / "fresh.h5"
    subprocess.run(extract(demo, fresh), check=True, capture_output=True)
    store, reference = FeatureStore(out), FeatureStore(fresh)
    np.testing.assert_array_equal(store.gather(store.image_ids)["features"],
                                  reference.gather(store.image_ids)["features"])
    verify = subprocess.run([sys.executable, "-m", "features", "verify", str(out)], capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0, verify.stdout


def decode_command(checkpoint: Path, data: Path, out: Path, features: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "captioner", "job", "decode", "--spec", '{"device": "cpu", "beam_size": 2}',
            "--checkpoint", str(checkpoint), "--features", str(features or data / "grid.h5"), "--captions",
            str(data / "text/captions.json"), "--split", "test", "--out", str(out)]


@pytest.fixture(scope="module")
def trained(caption_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    assert run_in_process(train_command(caption_set, out, dict(HPARAMS, epochs=1))).returncode == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty", "not_a_checkpoint"])
def test_damaged_checkpoint_is_named_by_decode_and_resume(caption_set, trained, tmp_path, damage):
    data = trained.read_bytes()
    broken = {"truncated": data[: len(data) // 2], "zeroed": data[:1000] + bytes(len(data) - 1000), "empty": b"",
              "not_a_checkpoint": b"PK\x03\x04 not really a zip"}[damage]
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(broken)
    result = run_in_process(decode_command(checkpoint, caption_set, tmp_path / "predictions.json"))
    clean_error(result, str(checkpoint))
    assert not (tmp_path / "predictions.json").exists()

    out_dir = tmp_path / "run"  # a damaged last.pt is refused, not half-loaded
    out_dir.mkdir()
    (out_dir / "last.pt").write_bytes(broken)
    result = run_in_process(train_command(caption_set, out_dir, HPARAMS))
    clean_error(result, str(out_dir / "last.pt"))
    assert (out_dir / "last.pt").read_bytes() == broken  # kept for inspection, not overwritten


@pytest.mark.parametrize("damage", ["truncated", "garbage_chunk", "not_a_store"])
def test_damaged_store_is_named_by_training_and_decoding(caption_set, trained, tmp_path, damage):
    data = (caption_set / "grid.h5").read_bytes()
    store = tmp_path / "grid.h5"
    if damage == "truncated":
        store.write_bytes(data[: len(data) // 2])
    elif damage == "not_a_store":
        store.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    else:  # the HDF5 structure is intact but a data chunk's bytes are not the floats that were written
        store.write_bytes(data)
        raw = bytearray(data)
        with h5py.File(store, "r") as handle:
            for row in (5, 55):  # image 5 is read by training, image 55 (test split) by decoding
                offset = handle["features"].id.get_chunk_info(row).byte_offset
                raw[offset:offset + 128] = b"\xff" * 128  # 0xffffffff is a NaN in float32
        store.write_bytes(bytes(raw))
    result = run_in_process(train_command(caption_set, tmp_path / "out", HPARAMS, features=store))
    line = clean_error(result, str(store))
    if damage == "garbage_chunk":
        assert "non-finite" in line and "5" in line
    assert not (tmp_path / "out/checkpoint.pt").exists()
    result = run_in_process(decode_command(trained, caption_set, tmp_path / "p.json", features=store))
    line = clean_error(result, str(store))
    if damage == "garbage_chunk":
        assert "non-finite" in line and "55" in line
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_stored_feature_names_the_image(caption_set, tmp_path, value):
    store = tmp_path / "grid.h5"
    store.write_bytes((caption_set / "grid.h5").read_bytes())
    with h5py.File(store, "r+") as handle:  # damage after writing: the writer itself refuses NaN/Inf
        row = int(np.nonzero(handle["image_ids"][:] == 17)[0][0])
        handle["features"][row, 1, 2] = value
    result = run_in_process(train_command(caption_set, tmp_path / "out", HPARAMS, features=store))
    clean_error(result, "non-finite", "17", str(store))
    verify = run_in_process([sys.executable, "-m", "features", "verify", str(store)])
    assert verify.returncode == 1 and "17" in verify.stdout


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(caption_set, tmp_path):
    def trainer(epochs):
        return Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                       str(caption_set / "text/vocab.json"), dict(HPARAMS, epochs=epochs), str(tmp_path / "out"))

    trainer(3).run()
    good = (tmp_path / "out/last.pt").read_bytes()
    best = (tmp_path / "out/checkpoint.pt").read_bytes()
    diverging = trainer(3)  # resumes after epoch 3 ...
    diverging.recipe.epochs = 4  # ... and trains one more, with weights that make the loss NaN
    with torch.no_grad():
        diverging.model.init_h[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 4, step \d+"):
        diverging.run()
    assert (tmp_path / "out/last.pt").read_bytes() == good
    assert (tmp_path / "out/checkpoint.pt").read_bytes() == best


def test_caption_id_missing_from_the_store_fails_before_training(caption_set, tmp_path):
    captions = json.loads((caption_set / "text/captions.json").read_text())
    captions["splits"]["train"][3]["image_id"] = 4242
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    command = train_command(caption_set, tmp_path / "out", HPARAMS)
    command[command.index("--captions") + 1] = str(tmp_path / "captions.json")
    result = run_in_process(command)
    clean_error(result, "image id 4242", str(caption_set / "grid.h5"))
    assert not (tmp_path / "out").exists()
