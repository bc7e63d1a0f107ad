"""``sdf index --engine ray``: one Ray task per file on a Ray cluster (or a local one).

Workers get the task (a path or URL string and a few numbers), never file bytes: a checkpoint is
bigger than the 2 GiB an Arrow binary cell holds, and a worker next to the data (or streaming it from
object storage, :mod:`sdforensics.readers.remote`) does not need the driver's network. Results (the
fingerprint, a few MB) come back to the driver, where the one writer commits each in its own
transaction, so a worker that dies never leaves a partial or duplicate library entry:

* at most ``max_in_flight`` files are submitted at once (``ray.wait`` for one to finish before the next
  is submitted), so 100,000 files never sit in the object store at once;
* a worker process that dies (OOM killer, ``kill -9``, a lost node) has its file redone by Ray
  (``max_retries``); only when every retry died is the file reported as skipped, with the reason;
* a task asks for ``num_gpus=1`` when the cluster has GPUs and the run may use them, one CPU otherwise.

Ray is an optional extra (``pip install 'sdforensics[cluster]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sdforensics.core.errors import SdfError

T = TypeVar("T")
R = TypeVar("R")

INSTALL = "--engine ray needs Ray, which is not installed: pip install 'sdforensics[cluster]'"


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SdfError(INSTALL) from None
    return ray


class RayEngine:
    """Runs each task as a Ray task (see the module docstring).

    ``address``: a running cluster (``ray://host:10001`` or ``host:6379``, ``auto``); None starts a
    local one for the run. ``use_gpus``: ask for a GPU per task when the cluster has any.
    ``failed(task, reason)``: the result to yield for a task every retry of which died (default: raise)."""

    def __init__(
        self,
        address: str | None = None,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        use_gpus: bool = False,
        failed: Callable[[Any, str], Any] | None = None,
        num_cpus: int | None = None,
    ) -> None:
        self.address = address
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.use_gpus = use_gpus
        self.failed = failed
        self.num_cpus = num_cpus
        self.gpus_per_task = 0
        self.ray = import_ray()

    def _start(self) -> bool:
        """Connect (or start a local cluster); True when this engine started it (and stops it after)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = self.address or "a local cluster"
            raise SdfError(f"cannot connect to the Ray cluster at {where}: {str(err).splitlines()[0]}") from None
        return True

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        ray = self.ray
        owns = self._start()
        try:
            resources = ray.cluster_resources()
            cpus = int(resources.get("CPU", 1)) or 1
            self.gpus_per_task = 1 if self.use_gpus and resources.get("GPU", 0) >= 1 else 0
            limit = self.max_in_flight or 2 * max(cpus, int(resources.get("GPU", 0)))
            remote = ray.remote(fn).options(
                max_retries=self.max_retries, retry_exceptions=False,
                num_cpus=0 if self.gpus_per_task else 1, num_gpus=self.gpus_per_task,
            )
            pending = iter(tasks)
            running: dict[Any, T] = {}
            while True:
                while len(running) < limit:
                    task = next(pending, None)
                    if task is None:
                        break
                    running[remote.remote(task)] = task
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    task = running.pop(ref)
                    yield self._get(ref, task)
        finally:
            if owns:
                ray.shutdown()

    def _get(self, ref: Any, task: Any) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError) as err:
            reason = (f"every try died ({self.max_retries + 1} workers lost: "
                      f"{type(err).__name__}); not indexed")
            if self.failed is None:
                raise SdfError(f"{getattr(task, 'path', task)}: {reason}") from None
            return self.failed(task, reason)
