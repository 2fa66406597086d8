"""Image datasets for the clustering searches: MNIST, Fashion-MNIST, sklearn digits, any IDX dir.

Every source ends up as a `Dataset` of uint8 [N, H, W] images and int64 labels, split into
train / validation / test. The validation split is carved from the original train split with a
seeded permutation; search objectives are measured on it, never on test. Labels are only for
reporting (clustering is unsupervised).

All IDX sources (MNIST, Fashion-MNIST, a user directory) go through one reader, `read_idx`;
torchvision is used only to download missing files, never to parse them.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("auto", "mnist", "fashion-mnist", "digits")

# Debian's `dataset-fashion-mnist` package installs the four .gz files here.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# torchvision/LeCun file names, in (train images, train labels, test images, test labels) order.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX dtype codes; the data is big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Short enough that an offline machine falls back quickly, long enough for a slow mirror.
_DOWNLOAD_TIMEOUT_S = 10.0
_DIGITS_TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """A dataset cannot be found or read; the message names the file/dir and what to do."""


# eq=False: the generated __eq__ would compare arrays element-wise and raise.
@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # "mnist", "fashion-mnist", "digits" or the IDX dir path
    source: str  # absolute path (or "sklearn:digits") the images were read from
    x_train: np.ndarray  # uint8 [N, H, W], the original train split minus validation
    y_train: np.ndarray  # int64 [N]
    x_val: np.ndarray  # uint8 [V, H, W], carved from the original train split
    y_val: np.ndarray
    x_test: np.ndarray  # uint8 [T, H, W]
    y_test: np.ndarray

    def __post_init__(self) -> None:
        shape = self.x_train.shape[1:]
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            where = f"{self.source} ({split} split)"
            _check_images(x, where)
            _check_labels(y, where)
            if x.shape[1:] != shape:
                raise DatasetError(
                    f"{where}: image shape {x.shape[1:]} differs from the train split's {shape}"
                )
            if len(x) != len(y):
                raise DatasetError(f"{where}: {len(x)} images but {len(y)} labels")

    @property
    def image_shape(self) -> tuple[int, int]:
        h, w = self.x_train.shape[1:]
        return int(h), int(w)

    @property
    def n_classes(self) -> int:
        return int(np.unique(np.concatenate([self.y_train, self.y_val, self.y_test])).size)

    def mean_image_loss(self) -> float:
        """MSE of reconstructing every image of the objective's split (validation, or train
        without one) as the split's mean image, in the trials' [0, 1] scale: the loss of an
        autoencoder that learnt nothing, and the hypervolume's reference loss."""
        x = self.x_val if len(self.x_val) else self.x_train
        x = x.reshape(len(x), -1).astype(np.float64) / 255.0
        return float(x.var(axis=0).mean())

    def digest(self) -> str:
        """A short content hash of the images and labels of every split (MLflow's dataset
        digest): the same data gives the same digest on any machine."""
        h = hashlib.sha256()
        for split in ("train", "val", "test"):
            for a in (getattr(self, f"x_{split}"), getattr(self, f"y_{split}")):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:12]

    def summary(self) -> dict:
        """Flat, string/int-valued description, suitable for logging as run params."""
        h, w = self.image_shape
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.x_train),
            "n_val": len(self.x_val),
            "n_test": len(self.x_test),
            "image_shape": f"{h}x{w}",
            "n_classes": self.n_classes,
        }


def default_data_dir() -> Path:
    """`<repo root>/data` (git-ignored), where downloads land by default."""
    return Path(__file__).resolve().parent.parent / "data"


def read_idx(path: str | Path) -> np.ndarray:
    """Read any IDX file (optionally gzipped) into a native-endian array of its declared shape."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt gzip data ({_one_line(e)})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({_one_line(e)})") from None

    if len(buf) < 4:
        raise DatasetError(f"{path}: truncated IDX file: {len(buf)} bytes, no 4-byte header")
    if buf[0] != 0 or buf[1] != 0:
        raise DatasetError(
            f"{path}: bad IDX magic {buf[:4].hex()}: expected two zero bytes, not an IDX file"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unknown IDX dtype code 0x{code:02X}")
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetError(
            f"{path}: truncated IDX file: header declares {ndim} dims, file has {len(buf)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    if found < expected:
        raise DatasetError(
            f"{path}: truncated IDX file: expected {expected} data bytes, found {found}"
        )
    if found > expected:
        raise DatasetError(
            f"{path}: {found - expected} trailing bytes after the {expected} data bytes "
            f"declared by the IDX header"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header, count=expected // dtype.itemsize)
    # astype copies: the result is native-endian and writable (frombuffer over bytes is not).
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def resolve_auto(data_dir: str | Path | None = None, download: bool = True) -> str:
    """Return "mnist" if its files are on disk (or can be downloaded), else the offline "digits".

    Files that are present but corrupt still resolve to "mnist", so loading fails loudly
    instead of silently switching datasets.
    """
    data_dir = _data_dir(data_dir)
    if _idx_set_present(data_dir / "MNIST" / "raw"):
        return "mnist"
    if download:
        try:
            _download(data_dir, "MNIST")
        except DatasetError:
            return "digits"
        return "mnist"
    return "digits"


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 1 / 6,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name (see DATASETS) or from a directory of IDX files.

    `val_fraction` of the original train split (rounded) becomes the validation split, chosen by
    a permutation seeded with `seed`. "digits" ships without a test split, so a stratified 20%
    test split is carved first (also seeded with `seed`), then validation from the remainder.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data_dir = _data_dir(data_dir)
    if name == "auto":
        name = resolve_auto(data_dir, download=download)

    if name == "mnist":
        raw = data_dir / "MNIST" / "raw"
        if not _idx_set_present(raw):
            if not download:
                raise DatasetError(_not_found("MNIST", raw, "download disabled"))
            _download(data_dir, "MNIST")
        source = raw
    elif name == "fashion-mnist":
        raw = data_dir / "FashionMNIST" / "raw"
        if _idx_set_present(raw):
            source = raw
        elif _idx_set_present(DEBIAN_FASHION_MNIST_DIR):
            source = DEBIAN_FASHION_MNIST_DIR
        elif not download:
            raise DatasetError(_not_found("FashionMNIST", raw, "download disabled"))
        else:
            _download(data_dir, "FashionMNIST")
            source = raw
    elif name == "digits":
        x_train, y_train, x_test, y_test = _load_digits(seed)
        return _split(name, "sklearn:digits", x_train, y_train, x_test, y_test, val_fraction, seed)
    elif Path(name).is_dir():
        source = Path(name)
    elif "/" in name or name.startswith((".", "~")):  # meant as a directory
        raise DatasetError(
            f"{name}: no such directory (expected the four IDX files there: {', '.join(IDX_FILES)})"
        )
    else:
        raise DatasetError(
            f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} "
            f"or the path of a directory holding the four IDX files ({', '.join(IDX_FILES)})"
        )

    source = source.resolve()
    return _split(name, str(source), *_read_idx_dir(source), val_fraction, seed)


def _data_dir(data_dir: str | Path | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()


def _find_idx(directory: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: torchvision's download leaves both, and plain reads faster.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_set_present(directory: Path) -> bool:
    return all(_find_idx(directory, stem) is not None for stem in IDX_FILES)


def _read_idx_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a torchvision/LeCun-named IDX directory."""
    paths = [_find_idx(directory, stem) for stem in IDX_FILES]
    missing = [stem for stem, p in zip(IDX_FILES, paths, strict=True) if p is None]
    if missing:
        raise DatasetError(
            f"{directory}: missing IDX file(s) {', '.join(missing)} (each may end in .gz); "
            f"expected {', '.join(IDX_FILES)}"
        )
    arrays = []
    for img_path, lbl_path in (paths[0:2], paths[2:4]):
        x, y = read_idx(img_path), read_idx(lbl_path)
        _check_images(x, str(img_path))
        _check_labels(y, str(lbl_path))
        if len(x) != len(y):
            raise DatasetError(
                f"{img_path} has {len(x)} images but {lbl_path} has {len(y)} labels; "
                f"the two files must come from the same split"
            )
        arrays += [x, y.astype(np.int64)]
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DatasetError(
            f"{paths[0]} has {arrays[0].shape[1:]} images but {paths[2]} has "
            f"{arrays[2].shape[1:]}; train and test images must be the same size"
        )
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _check_images(x: np.ndarray, where: str) -> None:
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(
            f"{where}: expected 3-D uint8 images [N, H, W], got {x.dtype} with shape {x.shape}"
        )


def _check_labels(y: np.ndarray, where: str) -> None:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(
            f"{where}: expected 1-D integer labels, got {y.dtype} with shape {y.shape}"
        )


def _load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 grey levels -> 0..255 so every source shares one uint8 scale.
    x = np.round(digits.images * 255 / 16).astype(np.uint8)
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=_DIGITS_TEST_FRACTION, stratify=y, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _split(
    name: str,
    source: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    val_fraction: float,
    seed: int,
) -> Dataset:
    n = len(x_train)
    n_val = round(n * val_fraction)
    if n_val >= n and n > 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted so both splits keep file order: runs differ only in which rows went where.
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Dataset(
        name=name,
        source=source,
        x_train=x_train[train_idx],
        y_train=y_train[train_idx].astype(np.int64),
        x_val=x_train[val_idx],
        y_val=y_train[val_idx].astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
    )


def _download(data_dir: Path, cls_name: str) -> None:
    """Fetch a torchvision IDX dataset into `<data_dir>/<cls_name>/raw`, or raise DatasetError."""
    raw = data_dir / cls_name / "raw"
    previous = socket.getdefaulttimeout()
    # torchvision's urlopen has no timeout of its own; without one an offline machine can hang.
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        from torchvision import datasets

        # One call fetches all four files (train and test); torchvision also gunzips them.
        getattr(datasets, cls_name)(root=str(data_dir), train=True, download=True)
    except Exception as e:  # any failure (network, md5, disk) means "not available"
        raise DatasetError(_not_found(cls_name, raw, _one_line(e))) from e
    finally:
        socket.setdefaulttimeout(previous)
    if not _idx_set_present(raw):
        raise DatasetError(_not_found(cls_name, raw, "download left no IDX files there"))


def _not_found(cls_name: str, raw: Path, reason: str) -> str:
    label = {"MNIST": "MNIST", "FashionMNIST": "Fashion-MNIST"}[cls_name]
    alternatives = {
        "MNIST": "--dataset digits / --dataset fashion-mnist",
        "FashionMNIST": "--dataset digits / --dataset mnist",
    }[cls_name]
    debian = (
        f", install Debian's dataset-fashion-mnist (files in {DEBIAN_FASHION_MNIST_DIR})"
        if cls_name == "FashionMNIST"
        else ""
    )
    return (
        f"{label} not found in {raw} and could not be downloaded ({reason}); "
        f"put the four IDX files there{debian}, or pass {alternatives} "
        f"/ --dataset /path/to/idx-dir"
    )


def _one_line(e: BaseException) -> str:
    # torchvision's errors span lines ("Tried <mirror>, got:\n<error>"); the last is the cause.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
