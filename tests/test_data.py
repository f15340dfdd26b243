import gzip
import struct

import numpy as np
import pytest

from raeae.data import copy_samples, is_validation, load_idx, load_images, load_source, parse_idx, to_channels
from raeae.storage import StorageConfig, StorageError, strip_scheme


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, *arr.shape) + arr.tobytes()


def write_mnist(folder, n=40, size=8, seed=0):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    test = rng.integers(0, 256, (n // 4, size, size), dtype=np.uint8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(train)))
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(test))
    return train, test


def test_idx_gzipped_and_plain(tmp_path):
    train, test = write_mnist(tmp_path)
    assert np.array_equal(load_idx(str(tmp_path), "train"), train)
    assert np.array_equal(load_idx(str(tmp_path), "test"), test)


def test_truncated_or_foreign_idx_is_refused():
    arr = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(idx_bytes(arr)[:-5])
    with pytest.raises(ValueError, match="not an IDX"):
        parse_idx(b"\x00\x00\x08\x01" + b"\x00" * 20)


def test_idx_source_splits_train_and_validation(tmp_path):
    write_mnist(tmp_path, n=100)
    src = load_source(str(tmp_path), channels=1, val_fraction=0.1, seed=0)
    assert src.train_rows.num_rows == 90 and src.val_rows.num_rows == 10


def test_image_source_holds_out_a_stable_part(tmp_path, clean_photos):
    a = load_source(str(clean_photos), 1, 0.3, seed=0)
    b = load_source(str(clean_photos), 1, 0.3, seed=0)
    assert a.val_files == b.val_files and a.val_files
    assert not set(a.train_files) & set(a.val_files)


def test_a_folder_that_hashes_entirely_into_validation_still_keeps_one_to_train_on(tmp_path):
    """The split hashes each file's path, so 4 files at 0.3 all land in validation about once in 120
    folders (it happened to a CI run's temporary folder: training then started on the validation files)."""
    copy_samples(tmp_path / "four", ("camera.png", "coins.png", "astronaut.png", "chelsea.png"))
    every = load_source(str(tmp_path / "four"), 1, 1.0, seed=0)  # a fraction of 1: every file hashes into validation
    assert len(every.train_files) == 1 and len(every.val_files) == 3
    assert not set(every.train_files) & set(every.val_files)
    copy_samples(tmp_path / "one", ("camera.png",))
    assert len(load_source(str(tmp_path / "one"), 1, 0.3, seed=0).train_files) == 1  # a single image always trains


def test_idx_shares_split_the_training_rows_between_the_workers(tmp_path):
    write_mnist(tmp_path, n=100)
    src = load_source(str(tmp_path), channels=1, val_fraction=0.1, seed=0)
    shares = [src.train_share(rank, 3, channels=1) for rank in range(3)]
    assert [len(s) for s in shares] == [30, 30, 30] and src.train_count == 90
    seen = {a.tobytes() for share in shares for a in share}
    assert len(seen) == 90 and all(a.shape == (8, 8, 1) and a.dtype == np.uint8 for a in shares[0])
    assert len(src.validation(channels=1)) == 10 and not seen & {a.tobytes() for a in src.validation(1)}


def test_file_shares_split_the_files_and_skip_an_undecodable_one_with_a_line(tmp_path, clean_photos, capsys):
    for p in sorted(clean_photos.iterdir()):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    src = load_source(str(tmp_path), 3, 0.0, seed=0)
    assert src.val_files and not set(src.val_files) & set(src.train_files)  # tiny folder: one held out
    shares = [src.train_share(rank, 2, channels=3) for rank in range(2)]
    assert all(a.ndim == 3 and a.shape[2] == 3 for share in shares for a in share)
    broken = [f for f in src.train_files + src.val_files if f.endswith("zz-broken.png")]
    decoded = sum(len(s) for s in shares) + len(src.validation(3))
    assert decoded == src.train_count + len(src.val_files) - 1  # every file but the broken one
    assert f"skipping training file {broken[0]}" in capsys.readouterr().out


def test_a_worker_reads_its_share_from_s3_with_the_credentials_it_was_handed(s3_env, clean_photos, monkeypatch):
    """Training workers on other nodes do not have the driver's AWS environment: they read with the
    StorageConfig the driver filled from it (as train() hands it to them)."""
    s3_env.bucket("trainset")
    s3_env.upload_dir(clean_photos, "s3://trainset/photos")
    src = load_source("s3://trainset/photos", 1, 0.0, seed=0)  # one file held out, three to train on
    storage = StorageConfig().with_environment()
    for k in s3_env.env():
        monkeypatch.delenv(k)
    shares = [src.train_share(rank, 2, channels=1, storage=storage) for rank in range(2)]
    assert sum(len(s) for s in shares) == src.train_count == len(src.train_files) and all(shares)
    assert len(src.validation(1, storage)) == len(src.val_files) >= 1


def test_validation_split_is_deterministic_and_close_to_the_fraction():
    picks = [is_validation(f"img{i}.png", 0.2, 0) for i in range(5000)]
    assert abs(sum(picks) / 5000 - 0.2) < 0.02
    assert picks == [is_validation(f"img{i}.png", 0.2, 0) for i in range(5000)]


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        load_source(str(tmp_path / "nope"), 1, 0.1, 0)
    with pytest.raises(StorageError, match="no images"):
        load_source(str(tmp_path), 1, 0.1, 0)


def test_channel_conversion():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    gray = to_channels(rgb, 1)
    assert gray.shape == (4, 5, 1) and int(gray[0, 0, 0]) == 76  # ITU-R 601 luma of pure red
    assert to_channels(np.zeros((4, 5), np.uint8), 3).shape == (4, 5, 3)
    assert to_channels(np.zeros((4, 5, 4), np.uint8), 3).shape == (4, 5, 3)


def test_load_images_reads_folders_and_idx(tmp_path, clean_photos):
    write_mnist(tmp_path)
    assert len(load_images(str(tmp_path), split="test")) == 10
    photos = load_images(str(clean_photos), channels=1)
    assert photos and all(a.ndim == 2 for _, a in photos)


@pytest.mark.parametrize("uri, path", [("s3://bucket/a/b.png", "bucket/a/b.png"), ("gs://b/x", "b/x"),
                                       ("/tmp/a.png", "/tmp/a.png"), ("rel/a.png", "rel/a.png"),
                                       ("C:/data/a.png", "C:/data/a.png")])
def test_strip_scheme_gives_the_filesystem_path(uri, path):
    assert strip_scheme(uri) == path
