"""A picklable job for executor tests: spawned workers import it by name (tests/ is on their sys.path)."""
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Ctx:
    device: str = "cpu"
    threads: int = 1

    def with_threads(self, threads):
        return dataclasses.replace(self, threads=threads)

    def with_device(self, device):
        return dataclasses.replace(self, device=device)


def pid(tag, ctx):
    """(tag, the worker's pid)."""
    return tag, os.getpid()


def nap(tag, ctx):
    """Say it started (a file in $IRN_TEST_NAP_DIR), then sleep long enough to be interrupted."""
    import pathlib
    import time

    pathlib.Path(os.environ["IRN_TEST_NAP_DIR"], f"started-{tag}").touch()
    time.sleep(60)
    return tag, os.getpid()


if __name__ == "__main__":  # the driver of test_interrupting_fresh_workers_*: three naps, one fresh worker each
    import sys

    from bench.executors import EXECUTORS

    EXECUTORS.get("process")([(i, Ctx()) for i in range(3)], nap, lambda r: None, jobs=1, fresh=True)
    sys.exit(0)
