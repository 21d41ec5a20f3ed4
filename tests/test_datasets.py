"""`bench data` (list / import / download) and the missing-data check before a suite runs.

The real-MNIST tests use ``../shared/data/mnist`` beside the checkout when it is there (CI has it) and are
skipped with the reason otherwise; the others build small IDX files and patch the expected checksums.
"""
from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bench import datasets as D
from bench.cli import app

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists(),
                                 reason=f"the real MNIST files are not at {SHARED_MNIST}")

# the standard MNIST label counts (train, test) — independent of any loader
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _idx_labels(path: Path) -> np.ndarray:
    """Parse an IDX1 label file (gzip) by hand: magic 2049, count, then uint8 labels."""
    raw = gzip.open(path).read()
    magic, n = struct.unpack(">II", raw[:8])
    assert magic == 2049
    return np.frombuffer(raw[8:], dtype=np.uint8, count=n)


@needs_mnist
def test_real_mnist_import_list_and_load(tmp_path):
    root = tmp_path / "data"
    r = cli("data", "import", "mnist", SHARED_MNIST, "--root", root)
    assert r.exit_code == 0, r.output
    assert "mnist: verified, 4 file(s)" in r.output
    r = cli("data", "list", "--root", root)
    assert r.exit_code == 0 and "verified" in r.output.split("mnist", 1)[1].splitlines()[0]

    from bench.tasks.data import load_mnist

    x_tr, y_tr = load_mnist(str(root), train=True)
    x_te, y_te = load_mnist(str(root), train=False)
    assert tuple(x_tr.shape) == (60000, 28, 28) and tuple(x_te.shape) == (10000, 28, 28)
    assert np.bincount(y_tr.numpy(), minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(y_te.numpy(), minlength=10).tolist() == TEST_COUNTS
    ref = _idx_labels(SHARED_MNIST / "train-labels-idx1-ubyte.gz")
    assert y_tr[:1000].numpy().tolist() == ref[:1000].tolist()
    assert y_tr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]

    # the ex4 task: the first 1000 training images, in order, and their inverse-frequency class weights
    from bench.tasks import build_task

    task = build_task({"name": "mnist", "root": str(root), "subset": 1000, "class_weights": "inverse_frequency"})
    train, _, _ = task.data(0)
    assert len(train) == 1000 and train.targets.tolist() == ref[:1000].tolist()
    counts = np.bincount(ref[:1000], minlength=10).astype(float)
    w = (1 / counts) / (1 / counts).sum()
    assert np.allclose(task._class_weight.numpy(), w, rtol=1e-6)


@needs_mnist
def test_real_mnist_one_changed_byte_is_refused_and_nothing_written(tmp_path):
    src = tmp_path / "copy"
    src.mkdir()
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, src / f.name)
    labels = gzip.open(src / "t10k-labels-idx1-ubyte.gz").read()
    bad = bytearray(labels)
    bad[100] = (bad[100] + 1) % 10
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    (src / "t10k-labels-idx1-ubyte").write_bytes(bytes(bad))  # raw files are accepted too
    root = tmp_path / "data"
    r = cli("data", "import", "mnist", src, "--root", root)
    assert r.exit_code == 2
    assert "t10k-labels-idx1-ubyte" in r.output and "nothing was imported" in r.output
    assert not (root / "MNIST" / "raw").exists() or not any((root / "MNIST" / "raw").iterdir())
    assert not [p for p in root.rglob("*") if p.is_file()]  # no temporary leftovers either


# ------------------------------------------------------------------------------- synthetic files

def _fake_mnist(folder: Path, gz: bool = True) -> dict:
    """Four small IDX files; returns {name: md5 of the raw bytes}."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for split, n in (("train", 12), ("t10k", 5)):
        imgs = struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
        labs = struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        for name, data in ((f"{split}-images-idx3-ubyte", imgs), (f"{split}-labels-idx1-ubyte", labs)):
            md5[name] = hashlib.md5(data).hexdigest()
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return md5


@pytest.fixture
def fake_catalog(monkeypatch, tmp_path):
    md5 = _fake_mnist(tmp_path / "src" / "nested", gz=True)
    ds = D.Dataset("mnist", "MNIST/raw", tuple((f, md5[f]) for f, _ in D.DATASETS["mnist"].files), "test")
    monkeypatch.setitem(D.DATASETS, "mnist", ds)
    return tmp_path / "src"


def test_import_from_folder_and_archive_then_loader_reads_it(fake_catalog, tmp_path):
    root = tmp_path / "root"
    st = D.import_dataset("mnist", fake_catalog, str(root))
    assert st.state == "verified" and len(st.present) == 4
    from bench.tasks.data import load_mnist

    x, y = load_mnist(str(root), train=True)
    assert tuple(x.shape) == (12, 28, 28)

    arch = tmp_path / "mnist.tar.gz"
    with tarfile.open(arch, "w:gz") as t:
        t.add(fake_catalog, arcname="pack")
    root2 = tmp_path / "root2"
    assert D.import_dataset("mnist", arch, str(root2)).state == "verified"


def test_archive_member_escaping_the_folder_is_refused(fake_catalog, tmp_path):
    arch = tmp_path / "evil.tar"
    with tarfile.open(arch, "w") as t:
        data = b"x"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(D.DataError):
        D.import_dataset("mnist", arch, str(tmp_path / "root"))
    assert not list(tmp_path.rglob("escaped.txt"))


def test_missing_file_and_wrong_checksum_name_the_file(fake_catalog, tmp_path):
    (fake_catalog / "nested" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(D.DataError, match="t10k-images-idx3-ubyte"):
        D.import_dataset("mnist", fake_catalog, str(tmp_path / "root"))
    _fake_mnist(fake_catalog / "nested")  # restore
    p = fake_catalog / "nested" / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + b"\x00"))
    with pytest.raises(D.DataError, match=r"train-labels-idx1-ubyte.*MD5"):
        D.import_dataset("mnist", fake_catalog, str(tmp_path / "root"))
    assert not (tmp_path / "root" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_list_reports_corrupt_file(fake_catalog, tmp_path):
    root = tmp_path / "root"
    D.import_dataset("mnist", fake_catalog, str(root))
    f = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-1] + b"\x07")
    st = D.status("mnist", str(root))
    assert st.state == "corrupt" and st.corrupt == ["t10k-labels-idx1-ubyte"]


# ------------------------------------------------------------------------------- before a suite runs

def _mnist_suite(tmp_path: Path, root: Path) -> Path:
    suite = {"name": "needs-mnist", "task": {"name": "mnist", "subset": 20, "arch": "mnist_compact", "root": str(root)},
             "train": {"epochs": 1}, "seeds": [0], "matrix": {"model.layer.theta": [0.0, 0.5]}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


@pytest.mark.parametrize("cmd", [["validate"], ["run", "--dry-run"], ["run"]])
def test_missing_data_stops_validate_dry_run_and_run(cmd, tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("IRN_TRACKING_URI", f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    root = tmp_path / "nodata"
    r = cli(*cmd, _mnist_suite(tmp_path, root))
    assert r.exit_code == 2, r.output
    assert "data set mnist is missing" in r.output and f"bench data import mnist <folder or archive> --root {root}" in r.output
    assert r.output.count("data set mnist") == 1  # one line per data set, not per cell
    assert not (tmp_path / "results" / "mlflow.db").exists()
