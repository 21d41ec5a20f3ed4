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
