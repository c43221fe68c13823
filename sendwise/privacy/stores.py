"""The stores ``privacy export`` and ``forget`` search besides the data directory (the MLflow store,
the exposure log, the event log), and the checks made before anything is read or written.

A store that is named, or left at its default, but is not there is an error, never "nothing found":
a misspelled path, or a default the service never wrote to, would otherwise let ``forget`` report
success while the customer's data stays where it really is. Saying that there is none is explicit
(``--no-mlruns``, ``--no-exposure-log``).

With a project the defaults are its own stores (``DIR/mlruns`` or the folder of its sqlite
``tracking_uri``, ``DIR/state/exposures.jsonl``, ``DIR/state``): the same rule applies to them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from features.errors import InputError, NotFoundError
from features.event_store import EventSource
from features.redis_log import RedisEventLog, RedisLocation
from training.tracking import user_tracking_uri

DEFAULT_MLRUNS = Path("mlruns")
DEFAULT_EXPOSURE_LOG = Path("exposures/exposures.jsonl")
MLFLOW_DB = "mlflow.db"  # what makes a folder an MLflow store (training.tracking.configure_tracking)
SQLITE = "sqlite:///"
EVENT_LOG_NAME = "events.jsonl"  # in the state folder, as serving.config.ServeConfig.events_path

MLRUNS_HELP = ("MLflow store root: the folder holding mlflow.db where the models were trained (default: the "
               f"folder of a sqlite MLFLOW_TRACKING_URI, else the project's, else {DEFAULT_MLRUNS}); it must exist.")
NO_MLRUNS_HELP = "No MLflow store was ever used for this data: search no models."
EXPOSURE_LOG_HELP = ("The service's exposure log (`sendwise serve --exposure-log`; the demo writes "
                     "WORKDIR/state/exposures.jsonl; default: the project's state/exposures.jsonl, else "
                     f"{DEFAULT_EXPOSURE_LOG}); it must exist.")
NO_EXPOSURE_LOG_HELP = "No service ever logged exposures for this data: search no exposure log."
EVENT_LOG_HELP = ("The event log (`POST /events`, the stream consumer; the service's SENDWISE_EVENT_LOG); it must exist "
                  "(default: events.jsonl in the state folder, searched when it exists).")
STATE_DIR_HELP = ("The service's state folder, holding the data's rejected rows it wrote (`sendwise serve "
                  "--state-dir`); default: the project's state/, else state/ next to the exposure log, "
                  "searched when it exists.")


def check_mlruns(path: Path | str) -> Path:
    """``path`` when it is an MLflow store; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"MLflow store {path} does not exist. Pass --mlruns DIR with the folder holding "
                            f"{MLFLOW_DB} where the models were trained, or --no-mlruns if no model was ever "
                            "trained on this data.")
    if not (path / MLFLOW_DB).is_file():
        raise NotFoundError(f"{path} is not an MLflow store (no {MLFLOW_DB} in it). Pass --mlruns DIR with the "
                            f"folder holding {MLFLOW_DB}, or --no-mlruns if no model was ever trained on this data.")
    return path


def check_exposure_log(path: Path | str) -> Path:
    """``path`` when it is a file; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise NotFoundError(f"exposure log {path} {what}. Pass --exposure-log FILE with the "
                            "log the service writes (`sendwise serve --exposure-log`; the demo writes "
                            "WORKDIR/state/exposures.jsonl), or --no-exposure-log if no service ever ran on this data.")
    return path


def check_event_log(path: EventSource | str) -> EventSource:
    """``path`` when it is a file, or a log in Redis whose server answers; a clear error otherwise."""
    if isinstance(path, RedisLocation):
        RedisEventLog(path, check_durability=False).close()  # an InputError naming it when it cannot be reached
        return path
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise NotFoundError(f"event log {path} {what}. Pass --event-log FILE with the log the service appends "
                            "events to (its SENDWISE_EVENT_LOG; default events.jsonl in its state folder), or leave "
                            "it out to search the state folder's.")
    return path


def resolve_event_log(given: Path | None, state_dir: Path | None) -> Path | None:
    """The event log a command searches: ``--event-log``, which must exist, else ``events.jsonl`` in the
    state folder (where the service keeps it by default) when it exists: a service that took no event
    wrote none."""
    if given is not None:
        return check_event_log(given)
    default = None if state_dir is None else Path(state_dir) / EVENT_LOG_NAME
    return default if default is not None and default.is_file() else None


def resolve_mlruns(given: Path | None, none: bool, default: Path = DEFAULT_MLRUNS,
                   tracking_uri: str | None = None) -> Path | None:
    """The MLflow store a command searches: ``--mlruns``, else the folder of the user's sqlite
    ``MLFLOW_TRACKING_URI``, else of ``tracking_uri`` (a project's setting), else ``default`` (a
    project's ``mlruns``, else ``mlruns``); None with ``--no-mlruns``. Checked to exist; a tracking
    URI that points at another store is refused (the models the command would load and the files it
    would clean must be the same)."""
    if none:
        if given is not None:
            raise InputError("--mlruns and --no-mlruns contradict each other; pass one of them.")
        return None
    user = user_tracking_uri()
    uri, source = (user, "MLFLOW_TRACKING_URI") if user is not None else (tracking_uri, "the project's tracking_uri")
    if uri is None:
        return check_mlruns(default if given is None else given)
    if not uri.startswith(SQLITE):
        raise InputError(f"{source} is {uri}: privacy export and forget search a local MLflow store only. "
                         + ("Unset it" if user is not None else "Pass") + " --mlruns DIR with the store's folder, "
                         "or pass --no-mlruns and remove the customer from that server's artifacts yourself.")
    root = Path(uri.removeprefix(SQLITE)).parent
    if given is not None and os.path.realpath(given) != os.path.realpath(root):
        raise InputError(f"{source} points at the store in {root} but --mlruns at {given}: "
                         + ("unset MLFLOW_TRACKING_URI" if user is not None else "leave --mlruns out")
                         + " or pass the same folder.")
    return check_mlruns(root)


def resolve_exposure_log(given: Path | None, none: bool, default: Path = DEFAULT_EXPOSURE_LOG) -> Path | None:
    """The exposure log a command searches: ``--exposure-log``, else ``default`` (a project's
    ``state/exposures.jsonl``, else ``exposures/exposures.jsonl``); None with ``--no-exposure-log``.
    Checked to exist."""
    if none:
        if given is not None:
            raise InputError("--exposure-log and --no-exposure-log contradict each other; pass one of them.")
        return None
    return check_exposure_log(default if given is None else given)


def resolve_state_dir(given: Path | None, exposure_log: Path | None, default: Path | None = None) -> Path | None:
    """The service's state folder (rejected rows of the data it loaded, a project's snapshot):
    ``--state-dir``, which must exist, else ``default`` (a project's ``state/``), else ``state/``
    next to the exposure log (as :attr:`serving.config.ServeConfig.rejects_dir`); a default is
    searched when it exists: a service that rejected no row wrote none."""
    if given is not None:
        if not Path(given).is_dir():
            raise NotFoundError(f"state folder {given} does not exist. Pass --state-dir DIR as given to "
                                "`sendwise serve --state-dir`, or leave it out for state/ next to the exposure log.")
        return Path(given)
    if default is None and exposure_log is not None:
        default = Path(exposure_log).parent / "state"
    return default if default is not None and default.is_dir() else None


def check_outside(out: Path | str, stores: Iterable[tuple[str, Path | str]]) -> None:
    """Refuse ``out`` inside one of ``stores`` (name, folder or file): an export written there would
    sit among the data that ``privacy forget`` cleans, where forget does not look for exports."""
    target = Path(os.path.realpath(out))
    for name, store in stores:
        root = Path(os.path.realpath(store))
        if target == root or root in target.parents:
            raise InputError(f"--out {out} is inside {name} {store}: an export holds the customer's personal "
                             "data and `sendwise privacy forget` would not remove it from there. Write it "
                             "outside the project's stores, e.g. --out exports/export-ID.json.")
