"""Real-format MNIST (IDX ubyte) and CIFAR (python pickles) files, loaded through the task code path."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from bench.tasks import DataIntegrityError, DataNotFoundError, build_task


def _idx_images(a: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *a.shape) + a.astype(np.uint8).tobytes()


def _idx_labels(a: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, a.shape[0]) + a.astype(np.uint8).tobytes()


def write_mnist(root, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        data[split] = (x, y)
        for kind, payload in (("images-idx3", _idx_images(x)), ("labels-idx1", _idx_labels(y))):
            name = raw / f"{split}-{kind}-ubyte"
            if gz:
                with gzip.open(str(name) + ".gz", "wb") as f:
                    f.write(payload)
            else:
                name.write_bytes(payload)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_load_and_subset_takes_the_first_n(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    task = build_task({"name": "mnist", "root": str(tmp_path), "subset": 7, "val_size": 2})
    train, val, test = task.data(seed=0)
    assert (len(train), len(val), len(test)) == (7, 2, 5)
    x0, y0 = train[0]
    assert x0.shape == (1, 28, 28) and x0.dtype == torch.float32 and 0 <= float(x0.min()) <= float(x0.max()) <= 1
    xs = torch.stack([train[i][0] for i in range(7)])
    expect = torch.tensor(data["train"][0][:7], dtype=torch.float32).unsqueeze(1) / 255
    torch.testing.assert_close(xs, expect)
    assert [train[i][1] for i in range(7)] == data["train"][1][:7].tolist()
    assert [val[i][1] for i in range(2)] == data["train"][1][7:9].tolist()
    assert [test[i][1] for i in range(5)] == data["t10k"][1].tolist()


def test_mnist_random_subset_is_seeded_and_env_root_is_used(tmp_path, monkeypatch):
    data = write_mnist(tmp_path)
    monkeypatch.setenv("IRN_DATA_ROOT", str(tmp_path))
    task = build_task({"name": "mnist", "subset": 6, "subset_mode": "random"})
    a, _, _ = task.data(seed=1)
    b, _, _ = task.data(seed=1)
    c, _, _ = task.data(seed=2)
    la, lb, lc = ([d[i][0] for i in range(6)] for d in (a, b, c))
    assert all(torch.equal(u, v) for u, v in zip(la, lb))
    assert not all(torch.equal(u, v) for u, v in zip(la, lc))
    pool = torch.tensor(data["train"][0], dtype=torch.float32) / 255
    assert all(any(torch.equal(x[0], p) for p in pool) for x in la)


def test_missing_mnist_gives_a_clear_error(tmp_path):
    task = build_task({"name": "mnist", "root": str(tmp_path / "nowhere")})
    with pytest.raises(DataNotFoundError) as e:
        task.data(0)
    msg = str(e.value)
    assert "MNIST" in msg and str(tmp_path / "nowhere" / "MNIST" / "raw") in msg and "download: true" in msg
    assert isinstance(e.value, FileNotFoundError)


def _write_cifar(root, which=10, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    if which == 10:
        folder = root / "cifar-10-batches-py"
        files, key, meta = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", "batches.meta"
        meta_obj = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}
    else:
        folder = root / "cifar-100-python"
        files, key, meta = ["train", "test"], "fine_labels", "meta"
        meta_obj = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"k{i}" for i in range(20)]}
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        x = rng.integers(0, 256, size=(n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, which, size=n_per_batch).tolist()
        entry = {"data": x, key: y, "filenames": [f"{f}_{i}.png" for i in range(n_per_batch)]}
        if which == 100:
            entry["coarse_labels"] = [v // 5 for v in y]
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)
        written[f] = (x, y)
    with open(folder / meta, "wb") as fh:
        pickle.dump(meta_obj, fh)
    return written


def test_cifar10_pickles_load_with_md5_check_off_and_fail_it_on(tmp_path):
    written = _write_cifar(tmp_path, 10)
    with pytest.raises(DataIntegrityError, match="check_md5: false"):
        build_task({"name": "cifar10", "root": str(tmp_path)}).data(0)
    task = build_task({"name": "cifar10", "root": str(tmp_path), "check_md5": False, "subset": 10, "augment": False})
    train, val, test = task.data(0)
    assert (len(train), val, len(test)) == (10, None, 4)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) <= float(x.max()) <= 1
    # CIFAR rows are channel-major 3×32×32 (torchvision reshapes to HWC, we back to CHW)
    expect = torch.tensor(written["data_batch_1"][0][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    torch.testing.assert_close(x, expect)
    assert y == written["data_batch_1"][1][0]
    labels = [train[i][1] for i in range(10)]
    assert labels == written["data_batch_1"][1] + written["data_batch_2"][1] + written["data_batch_3"][1][:2]
    aug = build_task({"name": "cifar10", "root": str(tmp_path), "check_md5": False}).data(0)[0]
    torch.manual_seed(0)
    xa = torch.stack([aug[0][0] for _ in range(8)])
    assert xa.shape == (8, 3, 32, 32) and not all(torch.equal(xa[0], v) for v in xa[1:])


def test_cifar100_pickles_and_missing_cifar(tmp_path):
    written = _write_cifar(tmp_path, 100, n_per_batch=6)
    task = build_task({"name": "cifar100", "root": str(tmp_path), "check_md5": False, "augment": False})
    train, _, test = task.data(0)
    assert len(train) == 6 and len(test) == 6 and task.num_classes == 100
    assert [train[i][1] for i in range(6)] == written["train"][1]
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        build_task({"name": "cifar10", "root": str(tmp_path)}).data(0)


def test_unverified_cifar_never_runs_code(tmp_path):
    """check_md5: false reads CIFAR pickles with an unpickler that accepts numeric arrays only: a file that would run
    code when unpickled is refused with its path named, and the code does not run."""
    _write_cifar(tmp_path, 10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": [0]}, fh)
    task = build_task({"name": "cifar10", "root": str(tmp_path), "check_md5": False, "augment": False})
    with pytest.raises(DataIntegrityError, match="data_batch_2.*only numeric arrays"):
        task.data(0)
    assert not marker.exists()
