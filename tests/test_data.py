"""Tests for tune.data: IDX parsing, dataset loading, and the validation split. No network."""

from __future__ import annotations

import gzip
import socket
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tune import data
from tune.data import DatasetError, load_dataset, read_idx, resolve_auto

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C}
_CODES |= {np.float32: 0x0D, np.float64: 0x0E}

N_TRAIN, N_TEST = 600, 100


def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """Serialise `arr` as IDX: 0x0000, dtype code, ndim, big-endian uint32 dims, big-endian data."""
    code = _CODES[arr.dtype.type] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = idx_bytes(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_idx_dir(directory: Path, x_train, y_train, x_test, y_test, gz=(True, False, False, True)):
    """Write the four LeCun-named files; `gz` picks which are gzipped (exercise both kinds)."""
    for stem, arr, zipped in zip(
        data.IDX_FILES, (x_train, y_train, x_test, y_test), gz, strict=True
    ):
        write_idx(directory / (stem + (".gz" if zipped else "")), arr)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> tuple[Path, tuple[np.ndarray, ...]]:
    """A torchvision-layout MNIST tree (<tmp>/MNIST/raw) of random 28x28 images."""
    rng = np.random.default_rng(123)
    arrays = (
        rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, N_TEST, dtype=np.uint8),
    )
    write_idx_dir(tmp_path / "MNIST" / "raw", *arrays)
    return tmp_path, arrays


def _row_index(x: np.ndarray) -> dict[bytes, int]:
    return {row.tobytes(): i for i, row in enumerate(x)}


# --- read_idx -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int32, np.uint8])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, dtype, suffix: str) -> None:
    arr = (np.random.default_rng(0).standard_normal((3, 4, 5)) * 50).astype(dtype)
    out = read_idx(write_idx(tmp_path / f"x.idx{suffix}", arr))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable, unlike a bare frombuffer view


def test_read_idx_float32_header_is_general(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 7, dtype=np.float32).reshape(2, 3, 7) / 3
    path = tmp_path / "f.idx"
    path.write_bytes(idx_bytes(arr))
    assert path.read_bytes()[:4] == bytes([0, 0, 0x0D, 3])
    np.testing.assert_array_equal(read_idx(path), arr)


def _corruptions() -> dict[str, tuple[str, bytes, str]]:
    good = idx_bytes(np.zeros((10, 4, 4), np.uint8))
    return {
        "truncated": (".idx", good[:-7], "truncated IDX file: expected 160 data bytes, found 153"),
        "truncated-header": (".idx", good[:9], "truncated IDX file"),
        "empty": (".idx", b"", "truncated IDX file"),
        "trailing": (".idx", good + b"junk", "4 trailing bytes"),
        "bad-magic": (".idx", b"\x01\x02" + good[2:], "bad IDX magic"),
        "unknown-dtype": (".idx", good[:2] + b"\x07" + good[3:], "unknown IDX dtype code 0x07"),
        "corrupt-gzip": (".gz", gzip.compress(good)[:12] + b"\xff" * 40, "corrupt gzip"),
        "truncated-gzip": (".gz", gzip.compress(good)[:-10], "corrupt gzip"),
        "not-gzip": (".gz", good, "corrupt gzip"),
    }


@pytest.mark.parametrize("case", list(_corruptions()))
def test_read_idx_corrupt_files_raise(tmp_path: Path, case: str) -> None:
    suffix, payload, reason = _corruptions()[case]
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    path.write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and reason in msg
    assert "\n" not in msg


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        read_idx(tmp_path / "nope")


# --- MNIST (fake tree) ----------------------------------------------------------------------


def test_load_fake_mnist(fake_mnist) -> None:
    root, (x_tr, y_tr, x_te, y_te) = fake_mnist
    ds = load_dataset("mnist", root, download=False)
    assert ds.name == "mnist"
    assert ds.source == str((root / "MNIST" / "raw").resolve())
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (500, 100, 100)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28)
        assert y.dtype == np.int64 and y.shape == (len(x),)
    np.testing.assert_array_equal(ds.x_test, x_te)
    np.testing.assert_array_equal(ds.y_test, y_te)
    assert ds.image_shape == (28, 28)
    assert ds.n_classes == len(np.unique(np.concatenate([y_tr, y_te])))
    assert ds.summary() == {
        "name": "mnist",
        "source": ds.source,
        "n_train": 500,
        "n_val": 100,
        "n_test": 100,
        "image_shape": "28x28",
        "n_classes": ds.n_classes,
    }


def test_val_split_partitions_train_reproducibly(fake_mnist) -> None:
    root, (x_tr, y_tr, _, _) = fake_mnist
    rows = _row_index(x_tr)  # random images: every row is unique, so rows identify indices
    assert len(rows) == N_TRAIN

    def indices(ds):
        return [rows[r.tobytes()] for r in ds.x_train], [rows[r.tobytes()] for r in ds.x_val]

    ds = load_dataset("mnist", root, download=False, val_fraction=0.25, seed=7)
    train_i, val_i = indices(ds)
    assert len(val_i) == 150 and len(train_i) == 450
    assert not set(train_i) & set(val_i)
    assert sorted(train_i + val_i) == list(range(N_TRAIN))  # exact partition of the original
    np.testing.assert_array_equal(ds.y_train, y_tr[train_i])  # labels travel with their images
    np.testing.assert_array_equal(ds.y_val, y_tr[val_i])

    again = load_dataset("mnist", root, download=False, val_fraction=0.25, seed=7)
    np.testing.assert_array_equal(again.x_val, ds.x_val)
    other = load_dataset("mnist", root, download=False, val_fraction=0.25, seed=8)
    assert indices(other)[1] != val_i


def test_val_fraction_zero_and_invalid(fake_mnist) -> None:
    root, (x_tr, _, _, _) = fake_mnist
    ds = load_dataset("mnist", root, download=False, val_fraction=0)
    assert ds.x_val.shape == (0, 28, 28) and ds.y_val.shape == (0,)
    np.testing.assert_array_equal(ds.x_train, x_tr)
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="val_fraction"):
            load_dataset("mnist", root, download=False, val_fraction=bad)


def test_prefers_uncompressed_file(fake_mnist) -> None:
    root, (x_tr, *_) = fake_mnist
    raw = root / "MNIST" / "raw"
    # A plain copy next to the (now broken) .gz: only the plain one may be read.
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(x_tr))
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"broken")
    ds = load_dataset("mnist", root, download=False, val_fraction=0)
    np.testing.assert_array_equal(ds.x_train, x_tr)


def test_resolve_auto(fake_mnist, tmp_path_factory) -> None:
    root, _ = fake_mnist
    assert resolve_auto(root, download=False) == "mnist"
    empty = tmp_path_factory.mktemp("empty")
    assert resolve_auto(empty, download=False) == "digits"
    ds = load_dataset("auto", root, download=False)
    assert ds.name == "mnist" and len(ds.x_test) == N_TEST
    assert load_dataset("auto", empty, download=False).name == "digits"


def test_mnist_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(err.value)
    assert f"{tmp_path.resolve() / 'MNIST' / 'raw'}" in msg
    assert "--dataset digits" in msg and "\n" not in msg


class _FailingMNIST:
    """Stands in for torchvision.datasets.MNIST on an offline machine."""

    timeouts: list = []

    def __init__(self, root, train=True, download=False):
        _FailingMNIST.timeouts.append(socket.getdefaulttimeout())
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
        )


def _fake_torchvision(monkeypatch, **classes) -> None:
    # A stand-in module: no network, and no 5 s torchvision import in a data-only test.
    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(**classes)
    monkeypatch.setitem(sys.modules, "torchvision", tv)


def test_download_failure_is_short_dataset_error(tmp_path: Path, monkeypatch) -> None:
    _fake_torchvision(monkeypatch, MNIST=_FailingMNIST)
    _FailingMNIST.timeouts = []
    before = socket.getdefaulttimeout()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "could not be downloaded (<urlopen error [Errno -3]" in msg and "\n" not in msg
    assert _FailingMNIST.timeouts == [data._DOWNLOAD_TIMEOUT_S]  # short timeout during the call
    assert socket.getdefaulttimeout() == before  # and restored after it
    assert resolve_auto(tmp_path) == "digits"


def test_download_success_is_read_with_read_idx(tmp_path: Path, monkeypatch) -> None:
    x = np.full((12, 28, 28), 9, np.uint8)
    y = np.arange(12, dtype=np.uint8) % 10

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            write_idx_dir(Path(root) / "MNIST" / "raw", x, y, x[:4], y[:4])

    _fake_torchvision(monkeypatch, MNIST=FakeMNIST)
    assert resolve_auto(tmp_path) == "mnist"
    ds = load_dataset("mnist", tmp_path, val_fraction=0.25)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (9, 3, 4)


# --- IDX directories ------------------------------------------------------------------------


def test_generic_idx_dir_as_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 5, 7), dtype=np.uint8)
    y = rng.integers(0, 3, 40).astype(np.int32)  # int32 labels are accepted too
    write_idx_dir(tmp_path / "mine", x, y, x[:10], y[:10], gz=(False,) * 4)
    ds = load_dataset(str(tmp_path / "mine"), val_fraction=0.5, seed=3)
    assert ds.name == str(tmp_path / "mine")
    assert ds.source == str((tmp_path / "mine").resolve())
    assert ds.image_shape == (5, 7)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (20, 20, 10)
    assert ds.y_train.dtype == np.int64 and ds.n_classes == len(np.unique(y))


def test_idx_dir_missing_file_lists_expected_names(tmp_path: Path) -> None:
    x, y = np.zeros((4, 3, 3), np.uint8), np.zeros(4, np.uint8)
    write_idx_dir(tmp_path, x, y, x, y)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path.resolve()) in msg and "t10k-labels-idx1-ubyte" in msg
    assert all(stem in msg for stem in data.IDX_FILES)


def test_idx_dir_count_mismatch_names_both_files(tmp_path: Path) -> None:
    x, y = np.zeros((4, 3, 3), np.uint8), np.zeros(4, np.uint8)
    write_idx_dir(tmp_path, x, y[:3], x, y, gz=(False,) * 4)
    with pytest.raises(DatasetError) as err:
        load_dataset(str(tmp_path))
    msg = str(err.value)
    assert "train-images-idx3-ubyte has 4 images" in msg
    assert "train-labels-idx1-ubyte has 3 labels" in msg


@pytest.mark.parametrize(
    "x, y, reason",
    [
        (np.zeros((4, 3, 3), np.float32), np.zeros(4, np.uint8), "3-D uint8 images"),
        (np.zeros((4, 9), np.uint8), np.zeros(4, np.uint8), "3-D uint8 images"),
        (np.zeros((4, 3, 3), np.uint8), np.zeros(4, np.float64), "1-D integer labels"),
    ],
)
def test_idx_dir_rejects_wrong_dtype_or_rank(tmp_path: Path, x, y, reason: str) -> None:
    write_idx_dir(tmp_path, x, y, x, y, gz=(False,) * 4)
    with pytest.raises(DatasetError, match=reason):
        load_dataset(str(tmp_path))


def test_idx_dir_train_test_shape_mismatch(tmp_path: Path) -> None:
    y = np.zeros(4, np.uint8)
    write_idx_dir(tmp_path, np.zeros((4, 3, 3), np.uint8), y, np.zeros((4, 3, 4), np.uint8), y)
    with pytest.raises(DatasetError, match="same size"):
        load_dataset(str(tmp_path))


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar", tmp_path)
    assert all(name in str(err.value) for name in data.DATASETS)


# --- digits ---------------------------------------------------------------------------------


def test_digits_offline_stratified() -> None:
    ds = load_dataset("digits", download=False, val_fraction=0)
    assert ds.source == "sklearn:digits"
    assert ds.image_shape == (8, 8) and ds.n_classes == 10
    n_total = len(ds.x_train) + len(ds.x_test)
    assert n_total == 1797 and len(ds.x_test) == int(np.ceil(0.2 * 1797))
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.uint8 and x.max() == 255 and x.min() == 0
    # Stratified: each class's test share is within one image of 20%.
    all_counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    assert np.all(np.abs(np.bincount(ds.y_test) - 0.2 * all_counts) <= 1)

    ds2 = load_dataset("digits", seed=1)
    assert (len(ds2.x_train), len(ds2.x_val)) == (1437 - 240, 240)
    assert not np.array_equal(ds2.y_test, ds.y_test)


# --- Fashion-MNIST --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason=f"{data.DEBIAN_FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist", tmp_path, download=False)
    assert ds.source == str(data.DEBIAN_FASHION_MNIST_DIR.resolve())
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (50000, 10000, 10000)
    assert ds.image_shape == (28, 28) and ds.x_train.dtype == np.uint8
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert set(np.unique(labels)) == set(range(10)) and ds.n_classes == 10


def test_fashion_mnist_missing_mentions_debian(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-such-dir")
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path.resolve() / "FashionMNIST" / "raw") in msg
    assert "dataset-fashion-mnist" in msg
