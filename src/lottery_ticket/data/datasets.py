"""Datasets as in-memory tensors: locate or download the files, read them, split and normalize.

Data root: `--data-root`, else `$LTH_DATA`, else `$XDG_CACHE_HOME/lottery_ticket/data` (or
`~/.cache/...`). Layout under the root: `mnist/`, `fashion_mnist/` (the four IDX .gz files each)
and `cifar10/cifar-10-batches-py/`.

Integrity: each IDX file is checked against the SHA-256 of its *decompressed* contents, so the
original download and a copy with a rewritten gzip header (Debian's `dataset-fashion-mnist`) are
both accepted; downloads are checked against the SHA-256 of the published .gz file before they
are renamed into place. CIFAR-10 is checked by structure and content (see `cifar.read_cifar10`),
because re-pickled copies are not byte-identical to the official archive. A local file that fails
its check is never overwritten: the error tells the user to delete it.
"""

from __future__ import annotations

import numbers
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery_ticket.data.cifar import TEST_BATCH, TRAIN_BATCHES
from lottery_ticket.data.download import download_file, extract_tar, file_sha256
from lottery_ticket.data.idx import read_idx_gz
from lottery_ticket.data.registry import DATASETS
from lottery_ticket.errors import LotteryError

NORMALIZATIONS = ("standard", "l2", "none")

# Mirrors, tried in order. Tests and users with a local mirror pass `mirrors=` instead.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    # The S3 website endpoint is plain HTTP; the SHA-256 check is what makes that acceptable.
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# Debian's `dataset-fashion-mnist` package installs the files here; looked at before downloading.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class IdxFile:
    name: str
    sha256: str  # of the .gz as published (checked on download)
    content_sha256: str  # of the decompressed IDX bytes (checked on every read)


# MNIST .gz hashes: the published ones (also in shared/data/README.md and TFDS's checksum list).
MNIST_FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

# Fashion-MNIST .gz hashes: TFDS's checksum list for the official URLs. The Debian files differ
# only in the gzip header (file name and mtime stripped); restoring the header reproduces files
# matching both these SHA-256s and the official MD5s, so the content hashes below (computed from
# the Debian files) are those of the original data.
FASHION_MNIST_FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


@dataclass(frozen=True)
class ArchiveFile:
    name: str
    sha256: str
    md5: str


# SHA-256 as pinned by Keras's CIFAR-10 loader; MD5 as published on the CIFAR-10 page. Both are
# checked on download.
CIFAR10_ARCHIVE = ArchiveFile(
    "cifar-10-python.tar.gz",
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "c58f30108f718f92721af3b95e74349a",
)
CIFAR10_BATCH_DIR = "cifar-10-batches-py"


@dataclass
class Splits:
    """A dataset in memory. x: float32 [N, C, H, W], already normalized; y: int64 [N]."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    validation_x: torch.Tensor
    validation_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    TENSORS = ("train_x", "train_y", "validation_x", "validation_y", "test_x", "test_y")

    def to(self, device: str | torch.device) -> Splits:
        """A copy with every tensor on `device` (e.g. to keep the whole dataset on the GPU)."""
        moved = {field: getattr(self, field).to(device) for field in self.TENSORS}
        return Splits(self.name, self.num_classes, self.input_shape, **moved)


def resolve_data_root(flag: str | Path | None = None) -> Path:
    """The --data-root flag, else $LTH_DATA, else a per-user cache directory."""
    if flag is not None and str(flag) != "":
        return Path(flag).expanduser()
    env = os.environ.get("LTH_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "lottery_ticket" / "data"


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    validation_size: int = 5000,
    split_seed: int = 0,
    normalization: str = "standard",
    permute_classes_seed: int | None = None,
    random_labels_seed: int | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    quiet: bool = False,
) -> Splits:
    """Load the registered dataset `name` (see `data/registry.py`; built in: mnist, fashion_mnist,
    cifar10) from `root` (see resolve_data_root), downloading missing files if `download`, and
    split/normalize it (see make_splits). `mirrors` overrides the dataset's own; `quiet` silences
    the download progress lines."""
    entry = DATASETS.get(name)
    _check_options(normalization)
    _check_validation_size(validation_size, entry.train_size)  # before any download
    root = resolve_data_root(root)
    mirrors = tuple(entry.mirrors if mirrors is None else mirrors)
    raw = entry.read(root, download=download, mirrors=mirrors, quiet=quiet)
    return make_splits(
        name,
        *raw,
        num_classes=entry.num_classes,
        validation_size=validation_size,
        split_seed=split_seed,
        normalization=normalization,
        permute_classes_seed=permute_classes_seed,
        random_labels_seed=random_labels_seed,
    )


def make_splits(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    validation_size: int = 5000,
    split_seed: int = 0,
    normalization: str = "standard",
    permute_classes_seed: int | None = None,
    random_labels_seed: int | None = None,
) -> Splits:
    """Build Splits from raw uint8 images [N, C, H, W] and integer labels.

    - validation: `validation_size` examples held out from the training images, chosen by
      `torch.randperm` with a generator seeded by `split_seed`; both parts keep the original order.
    - normalization: "standard" subtracts the per-channel mean and divides by the per-channel std
      of the *full original training set* (after /255), so the constants do not depend on the
      split; "l2" divides each example by its L2 norm (keras.utils.normalize, as in the original
      TensorFlow lottery ticket code; all-zero images stay zero); "none" is just /255.
    - permute_classes_seed: relabels the classes by one random permutation of the class ids drawn
      with that seed, applied alike to training, validation and test labels (the original
      lottery-ticket library's `permute_labels`: `y = permutation[y]` on train and test), so the
      task stays learnable under new class names.
    - random_labels_seed: shuffles the training labels across examples (train and validation,
      never test) with that seed, before the split, for random-label experiments.
    """
    _check_options(normalization)
    n = len(train_images)
    validation_size = _check_validation_size(validation_size, n)
    if train_images.dtype != torch.uint8 or test_images.dtype != torch.uint8:
        raise LotteryError("make_splits expects uint8 images")
    train_labels = train_labels.to(torch.int64)
    test_labels = test_labels.to(torch.int64)
    if permute_classes_seed is not None:
        classes = torch.randperm(num_classes, generator=torch.Generator().manual_seed(permute_classes_seed))
        train_labels, test_labels = classes[train_labels], classes[test_labels]
    if random_labels_seed is not None:
        generator = torch.Generator().manual_seed(random_labels_seed)
        train_labels = train_labels[torch.randperm(n, generator=generator)]

    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    validation_index = order[:validation_size].sort().values
    train_index = order[validation_size:].sort().values

    mean, std = channel_stats(train_images) if normalization == "standard" else (None, None)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return _normalize(images, normalization, mean, std)

    return Splits(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(train_images.shape[1:]),
        train_x=prepare(train_images[train_index]),
        train_y=train_labels[train_index],
        validation_x=prepare(train_images[validation_index]),
        validation_y=train_labels[validation_index],
        test_x=prepare(test_images),
        test_y=test_labels,
    )


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], after /255, as float64.

    Computed exactly from a 256-bin histogram per channel, so it is cheap in memory and does not
    depend on summation order.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        mean_square = (counts * values * values).sum() / total
        means.append(mean / 255)
        stds.append((mean_square - mean * mean).clamp_min(0).sqrt() / 255)
    return torch.stack(means), torch.stack(stds)


def _normalize(images, normalization, mean, std) -> torch.Tensor:
    x = images.to(torch.float32).div_(255)
    if normalization == "standard":
        shape = (1, -1, 1, 1)
        x.sub_(mean.to(torch.float32).view(shape)).div_(std.to(torch.float32).view(shape))
    elif normalization == "l2":
        norms = x.flatten(1).norm(dim=1)
        norms[norms == 0] = 1
        x.div_(norms.view(-1, 1, 1, 1))
    return x


def _check_validation_size(validation_size, num_train: int) -> int:
    if (
        not isinstance(validation_size, numbers.Integral)
        or isinstance(validation_size, bool)
        or not 0 <= validation_size < num_train
    ):
        raise LotteryError(
            f"validation size must be an integer from 0 to {num_train - 1} (the {num_train} "
            f"training images), got {validation_size!r}"
        )
    return int(validation_size)


def _check_options(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise LotteryError(
            f"unknown normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}"
        )


def read_idx_dataset(name, root: Path, *, download, mirrors, quiet):
    """MNIST or Fashion-MNIST as (train_x, train_y, test_x, test_y), uint8 images [N, 1, 28, 28]."""
    files = MNIST_FILES if name == "mnist" else FASHION_MNIST_FILES
    directory = root / name
    search = [directory] + ([FASHION_MNIST_SYSTEM_DIR] if name == "fashion_mnist" else [])
    tensors = {}
    for role, spec in files.items():
        path = _find_or_download(name, spec, search, directory, download, mirrors, quiet)
        tensors[role] = read_idx_gz(path, content_sha256=spec.content_sha256)
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.shape != (count, 28, 28) or labels.shape != (count,) or labels.max() >= 10:
            raise LotteryError(
                f"{name} {split} files in {directory} do not hold {count} 28x28 "
                "images with labels 0-9"
            )
    return (
        tensors["train_images"].unsqueeze(1),
        tensors["train_labels"],
        tensors["test_images"].unsqueeze(1),
        tensors["test_labels"],
    )


def _find_or_download(name, spec: IdxFile, search, directory, download, mirrors, quiet) -> Path:
    for candidate_dir in search:
        candidate = candidate_dir / spec.name
        if candidate.is_file():
            return candidate
    places = " or ".join(str(d) for d in search)
    if not download:
        raise LotteryError(
            f"{name}: {spec.name} not found in {places} and downloads are disabled; "
            "copy the files there or allow downloads"
        )
    return download_file(spec.name, directory, mirrors, spec.sha256, quiet=quiet)


def ensure_cifar10(
    root: str | Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    quiet: bool = False,
) -> Path:
    """The `cifar-10-batches-py` directory under `root/cifar10`, downloading and extracting the
    official archive if it is missing. Extraction goes to a temporary directory that is renamed
    into place, so an interrupted run never leaves a half-extracted dataset under the final name.
    """
    base = Path(root) / "cifar10"
    directory = base / CIFAR10_BATCH_DIR
    needed = TRAIN_BATCHES + (TEST_BATCH,)
    if directory.is_dir():
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise LotteryError(
                f"{directory} is incomplete (missing {', '.join(missing)}); delete it so a fresh "
                "copy is downloaded"
            )
        return directory
    archive = base / CIFAR10_ARCHIVE.name
    downloaded = False
    if archive.is_file():
        actual = file_sha256(archive)
        if actual != CIFAR10_ARCHIVE.sha256:
            raise LotteryError(
                f"{archive}: sha256 {actual} does not match the official archive "
                f"({CIFAR10_ARCHIVE.sha256}); delete it so a fresh copy is downloaded"
            )
    elif not download:
        raise LotteryError(
            f"cifar10: {directory} not found and downloads are disabled; "
            f"put the official {CIFAR10_BATCH_DIR} there or allow downloads"
        )
    else:
        mirrors = tuple(MIRRORS["cifar10"] if mirrors is None else mirrors)
        download_file(
            archive.name,
            base,
            mirrors,
            CIFAR10_ARCHIVE.sha256,
            md5=CIFAR10_ARCHIVE.md5,
            quiet=quiet,
        )
        downloaded = True
    if not quiet:
        print(f"extracting {archive} -> {directory}", file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".extract-"))
    try:
        extract_tar(archive, staging)
        extracted = staging / CIFAR10_BATCH_DIR
        missing = [name for name in needed if not (extracted / name).is_file()]
        if missing:
            raise LotteryError(f"{archive} does not contain {CIFAR10_BATCH_DIR}/{missing[0]}")
        os.replace(extracted, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if downloaded:
        archive.unlink()  # ours, verified and extracted; a user's own copy is left alone
    return directory
