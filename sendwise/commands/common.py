"""What every command shares: its options (``--project``, ``--data``, ``--rejects``, ``--encoding``,
``--feature-config``, ISO 8601 dates) and the one rule for what it works from.

A command reads the project of ``--project DIR`` (default: the current directory when it holds
``sendwise.yaml``); whatever the user did not give on the command line comes from that project, and
whatever the project does not set has today's default: **flag > project > default**. Without a
project every command works from its options alone, as before. :func:`resolve` applies the rule to
the options every data command has; :meth:`Resolved.pick` to a command's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from features.config import CONFIG_ENV
from features.dates import check_not_future, parse_iso_date
from features.errors import InputError
from features.io import Encoding
from sendwise.engines import EngineName
from sendwise.project import PROJECT_FILE, Project, ProjectSettings, SparkSettings, find_project
from training.tracking import configure_tracking

T = TypeVar("T")

ProjectOption = Annotated[Path | None, typer.Option(
    "--project", metavar="DIR", show_default=False,
    help=f"Project folder; its {PROJECT_FILE} gives what the options leave out (default: the current "
         f"directory when it holds {PROJECT_FILE}).")]
DataOption = Annotated[Path | None, typer.Option(
    "--data", metavar="DIR", show_default=False,
    help="Directory of contract tables, orders required (default: the project's data).")]
RejectsOption = Annotated[Path | None, typer.Option(
    "--rejects", metavar="DIR", show_default=False,
    help="Where rejected rows go (default: the project's state/rejects, else DATA/_rejects).")]
EncodingOption = Annotated[Encoding, typer.Option(
    "--encoding", case_sensitive=False, help="Text encoding of the CSV files (Parquet has none).")]
FeatureConfigOption = Annotated[Path | None, typer.Option(
    "--feature-config", metavar="FILE", show_default=False,
    help=f"YAML file of feature windows and weights (default: the project's feature_config, else "
         f"${CONFIG_ENV}, else the defaults).")]

EngineOption = Annotated[EngineName | None, typer.Option(
    "--engine", case_sensitive=False, show_default=False,
    help="duckdb (this machine) or spark (docs/scale.md); default: the project's engine, else duckdb.")]

NO_DATA = ("no data to read: pass --data DIR (a directory of contract tables) or --project DIR (a folder "
           f"holding {PROJECT_FILE}, made by `sendwise init DIR --data TABLES`), or run the command in a "
           "project's folder.")


def _click(parse: Callable[[Any], datetime]) -> Callable[[Any], datetime]:
    """``parse`` for a typer option: its InputError becomes click's usage error (exit 2, naming the
    option) instead of click's bare "invalid value"."""
    def parser(value: Any) -> datetime:
        try:
            return parse(value)
        except InputError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return parser


def date_option(*names: str, help: str, future: bool = False) -> Any:
    """A typer option holding an ISO 8601 date (naive UTC ``datetime``); unless ``future``, a date
    after now is refused."""
    parse = parse_iso_date if future else (lambda value: check_not_future(parse_iso_date(value)))
    return typer.Option(*names, parser=_click(parse), metavar="DATE",
                        help=f"{help} ISO 8601, e.g. 2011-10-09 or 2011-10-09T10:30Z.")


def pick(*values: T | None) -> T | None:
    """The first value that is not None: the flag, then the project's setting, then the default."""
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class Resolved:
    """What a command works from: the options given, else its project's settings (``project`` None
    when there is none), else today's defaults."""

    project: Project | None
    data: Path | None
    rejects: Path | None
    feature_config: Path | None

    @property
    def name(self) -> str | None:
        """The project's name, which names its models (``<name>.churn``); None: the global names."""
        return None if self.project is None else self.project.name

    @property
    def timezone(self) -> str | None:
        """The zone of timestamps written without one (None: UTC)."""
        return None if self.project is None else self.project.settings.timezone

    @property
    def mlruns(self) -> Path | None:
        """The MLflow store's folder (None: ./mlruns); a project's ``tracking_uri`` or the user's
        ``MLFLOW_TRACKING_URI`` wins over it, see :meth:`use_tracking`."""
        return None if self.project is None else self.project.mlruns

    def engine(self, flag: EngineName | None) -> EngineName:
        """``--engine`` when given, else the project's ``engine``, else DuckDB."""
        return self.pick(flag, lambda s: s.engine, EngineName.DUCKDB)

    @property
    def spark(self) -> SparkSettings | None:
        """The project's Spark settings (None without a project: the defaults)."""
        return None if self.project is None else self.project.spark

    def need_data(self) -> Path:
        """The data directory; an InputError naming both ways to give one when there is none."""
        if self.data is None:
            raise InputError(NO_DATA)
        return self.data

    def pick(self, flag: T | None, setting: Callable[[ProjectSettings], T | None], default: T) -> T:
        """``flag`` when given, else the project's ``setting(settings)`` when it sets one, else ``default``."""
        from_project = None if self.project is None else setting(self.project.settings)
        return pick(flag, from_project, default)

    def path(self, flag: Path | None, setting: Callable[[ProjectSettings], Path | None],
             default: Path | None = None) -> Path | None:
        """As :meth:`pick` for a file setting: the project's is relative to the project folder."""
        from_project = None if self.project is None else self.project.optional(setting(self.project.settings))
        return pick(flag, from_project, default)

    def use_tracking(self) -> str:
        """Point MLflow at the project's store (its ``tracking_uri``, else DIR/mlruns), or at ./mlruns
        without a project; ``MLFLOW_TRACKING_URI`` wins over both. Returns the URI."""
        return configure_tracking() if self.project is None else self.project.use_tracking()


def resolve(project: Path | None, *, data: Path | None = None, rejects: Path | None = None,
            feature_config: Path | None = None) -> Resolved:
    """The project of ``--project`` (else of the current directory, else none) and the shared
    options resolved against it: flag > project > default."""
    found = find_project(project)
    if found is None:
        return Resolved(None, data, rejects, feature_config)
    settings = found.settings
    return Resolved(found, pick(data, found.data), pick(rejects, found.rejects),
                    pick(feature_config, found.optional(settings.feature_config)))
