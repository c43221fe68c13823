"""Models and snapshot swapped live: a running service follows the registry's aliases and the
feature snapshot without a restart.

Every ``SENDWISE_RELOAD_SECONDS`` (default 30; ``0``: never, the service keeps what it started with)
a background thread reads what the service was loaded from (:class:`Source`): the version behind each
alias it serves (the configured ones and those of the experiment variants not yet ended, in the
service's project), the snapshot file's identity (inode, size, mtime) and the data directory's files'
(catalog, customers' consent; and the features when no snapshot is configured). Those are a few
registry reads and a ``stat`` per file. When they differ from what is loaded, the whole router (every arm's state:
models, scores, catalog, lookups) is built again off the request path, with the same code as at
startup, and then swapped in by assigning one attribute (:attr:`LiveModels.current`), which is
atomic in CPython. A request reads that attribute once and answers from that :class:`Loaded` only,
so it never mixes an old model with a new snapshot; a request in flight finishes on the old one,
which is freed when the last such request ends. While the new one is built both are in memory.

A load that fails (an alias moved to a version whose artifact is missing or corrupt, a version
registered for another project, a snapshot of other feature settings, an alias removed) keeps the old
one serving and logs one warning per change: the same source is not tried again until the registry
or the snapshot changes once more. ``/model_info`` reports the versions in use and ``loaded_at``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.errors import InputError
from serving.config import ServeConfig
from serving.experiment_config import ExperimentSet
from serving.state import Aliases, ServingState, config_aliases
from serving.variants import VariantRouter, variant_aliases
from training.recommenders.store import REGISTERED_NAME
from training.registry import registered_name
from training.tracking import configure_tracking

__all__ = ["DEFAULT_RELOAD_SECONDS", "RELOAD_ENV", "LiveModels", "Loaded", "Source", "reload_seconds"]

logger = logging.getLogger(__name__)

RELOAD_ENV = "SENDWISE_RELOAD_SECONDS"
DEFAULT_RELOAD_SECONDS = 30.0
MODELS = ("churn", "propensity", REGISTERED_NAME)


def reload_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between two checks (``SENDWISE_RELOAD_SECONDS``; 0: no checks), or an
    :class:`~features.errors.InputError` naming the variable."""
    text = environ.get(RELOAD_ENV)
    if text is None:
        return DEFAULT_RELOAD_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise InputError(f"service settings: {RELOAD_ENV}: expected a number of seconds >= 0 between two checks "
                         f"for a moved alias or a new snapshot (0: never check); got {text!r}.")
    return seconds


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Source:
    """What a load reads: the version behind each (registered name, alias) served, None where no
    version carries the alias; the snapshot file's (inode, size, mtime_ns), None without one; and
    (relative path, inode, size, mtime_ns) of each file of the data directory."""

    versions: tuple[tuple[str, str, str | None], ...]
    snapshot: tuple[int, int, int] | None
    data: tuple[tuple[str, int, int, int], ...] = ()

    def changes(self, before: Source) -> str:
        """What changed since ``before``, for the log: ``churn@champion 3 -> 4; snapshot``."""
        old = {(n, a): v for n, a, v in before.versions}
        parts = [f"{n}@{a} {old.get((n, a))} -> {v}" for n, a, v in self.versions if old.get((n, a)) != v]
        if self.snapshot != before.snapshot:
            parts.append("snapshot file")
        if self.data != before.data:
            parts.append("data directory")
        return "; ".join(parts) or "served aliases"


@dataclass(frozen=True)
class Loaded:
    """One complete load: the router (every arm's state), what it was loaded from, and when."""

    router: VariantRouter
    source: Source
    loaded_at: datetime  # when the load ended (UTC, naive)

    @property
    def state(self) -> ServingState:
        """The default arm's state (no experiment)."""
        return self.router.default.state

    @property
    def versions(self) -> dict[str, str]:
        return self.state.versions


def served_aliases(config: ServeConfig, experiments: ExperimentSet, now: datetime) -> list[Aliases]:
    """The alias sets a router loaded at ``now`` serves (as :meth:`VariantRouter.load`)."""
    live = [v for e in experiments.experiments if e.end > now for v in e.variants]
    return list(dict.fromkeys([config_aliases(config), *(variant_aliases(config, v) for v in live)]))


def _snapshot_identity(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _data_identity(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    files = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            try:
                stat = path.stat()
            except OSError:  # removed while listed: the next check sees the directory as it is then
                continue
            files.append((str(path.relative_to(directory)), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


class LiveModels:
    """The service's models and snapshot, loaded by ``load(now)`` at construction and again, in the
    background, whenever :class:`Source` changes (:meth:`reload_now`, called by the thread of
    :meth:`start` or directly)."""

    def __init__(self, config: ServeConfig, experiments: ExperimentSet,
                 load: Callable[[datetime], VariantRouter]) -> None:
        self._config, self._experiments, self._load = config, experiments, load
        self._lock = threading.Lock()  # one check or load at a time
        self._failed: Source | None = None  # a source whose load failed: not retried until it changes
        self._unreadable: str | None = None  # the last error reading the source (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = _now()
        self._uri = configure_tracking(config.mlruns)  # the store the load uses (load_champions): checks read it
        source = self._read_source(now)  # before the load: a file changed during it is loaded again later
        router = load(now)
        self.current = Loaded(router, self._loaded_source(router, source), _now())

    def _read_source(self, now: datetime) -> Source:
        client = MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)
        versions = []
        for aliases in served_aliases(self._config, self._experiments, now):
            for model, alias in zip(MODELS, aliases, strict=True):
                name = registered_name(model, self._config.project)
                try:
                    version: str | None = str(client.get_model_version_by_alias(name, alias).version)
                except MlflowException:  # no such alias (as training.registry.alias_version)
                    version = None
                versions.append((name, alias, version))
        return Source(tuple(sorted(set(versions), key=lambda v: (v[0], v[1]))),
                      _snapshot_identity(self._config.snapshot), _data_identity(self._config.data))

    def _loaded_source(self, router: VariantRouter, source: Source) -> Source:
        """``source`` with the default arm's versions as they were loaded: if an alias moved between the
        load and the read, the next check sees a difference and loads again."""
        loaded = dict(zip((registered_name(m, self._config.project) for m in MODELS),
                          router.default.state.versions.values(), strict=True))
        defaults = set(zip((registered_name(m, self._config.project) for m in MODELS), config_aliases(self._config),
                           strict=True))
        return Source(tuple((n, a, loaded[n] if (n, a) in defaults else v) for n, a, v in source.versions),
                      source.snapshot, source.data)

    def reload_now(self) -> bool:
        """Check the source; when it changed, load everything again and swap it in. True when swapped;
        False when nothing changed, or the load failed (the old one keeps serving, one warning)."""
        with self._lock:
            now = _now()
            try:
                source = self._read_source(now)
            except Exception as exc:  # noqa: BLE001 - registry unreachable, store locked: logged, tried again later
                message = f"{type(exc).__name__}: {exc}"
                if message != self._unreadable:
                    logger.warning("live reload: cannot read the registry (%s); serving what is loaded, checking "
                                   "again in the next interval.", message)
                self._unreadable = message
                return False
            self._unreadable = None
            before = self.current
            if source == before.source or source == self._failed:
                return False
            started = time.perf_counter()
            try:
                router = self._load(now)
            except Exception as exc:  # noqa: BLE001 - whatever a broken artifact raises: logged, old one kept
                self._failed = source
                logger.warning("live reload: %s changed but could not be loaded, still serving %s: %s",
                               source.changes(before.source), before.versions, exc)
                return False
            self._failed = None
            self.current = Loaded(router, self._loaded_source(router, source), _now())  # the swap: one assignment
            logger.info("live reload: %s; serving %s (snapshot as of %s), loaded in %.1f s",
                        source.changes(before.source), self.current.versions,
                        self.current.state.as_of.isoformat(), time.perf_counter() - started)
            del before, router
            # the new state lives as long as the old one did: out of the collector's sight, as at startup
            gc.freeze()
            return True

    def start(self, interval: float) -> None:
        """Check every ``interval`` seconds in a daemon thread (none for 0). The thread holds this
        object weakly: it ends with :meth:`stop` or when the object is gone."""
        if interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=_watch, args=(weakref.ref(self), self._stop, interval),
                                        name="sendwise-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _watch(ref: weakref.ref[LiveModels], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        live = ref()
        if live is None:
            return
        try:
            live.reload_now()
        except Exception:  # never let the watcher die: the next interval tries again
            logger.exception("live reload: check failed")
        del live
