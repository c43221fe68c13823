"""Which models, policy and content each customer gets: the running experiment's variant, or the
service's defaults when no experiment runs.

At startup every experiment that has not ended gets its variants prepared: a variant's
``model_aliases`` (e.g. ``recommender: challenger``) load their own models, its ``policy`` file its
own policy. The aliases are those of the service's project's models (``SENDWISE_PROJECT``:
``<project>.recommender@challenger``), checked like the defaults: a version registered for another
project stops the service from starting unless foreign models are allowed. A request assigns each customer with :func:`serving.assignment.assign_many`, the
same hashing as ``sendwise experiments assign``, so an assignment never changes between requests,
restarts or machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from serving.assignment import assign_many
from serving.config import ServeConfig
from serving.experiment_config import Experiment, ExperimentSet, Variant
from serving.policy import Policy
from serving.state import Aliases, NotReadyError, ServingState, config_aliases, load_states


@dataclass(frozen=True)
class Arm:
    """What one group of customers is served with."""

    state: ServingState
    policy: Policy
    experiment: str | None = None
    variant: str | None = None
    subject_line: str | None = None
    content_block: str | None = None


def variant_aliases(config: ServeConfig, variant: Variant) -> Aliases:
    """The aliases a variant serves: its ``model_aliases`` over the service's (of the models of
    ``config.project``)."""
    default, overrides = config_aliases(config), variant.model_aliases
    return (overrides.get("churn", default[0]), overrides.get("propensity", default[1]),
            overrides.get("recommender", default[2]))


class VariantRouter:
    """Maps customers to arms; with no running experiment everyone gets the default arm."""

    def __init__(self, experiments: ExperimentSet, default: Arm, arms: dict[tuple[str, str], Arm]) -> None:
        self.experiments, self.default, self.arms = experiments, default, arms

    @classmethod
    def load(cls, config: ServeConfig, experiments: ExperimentSet, default_policy: Policy,
             now: datetime, policy_loader: Callable[[object], Policy] = Policy.load) -> VariantRouter:
        """Load the models of every variant of the experiments that have not ended by ``now``."""
        live: list[Experiment] = [e for e in experiments.experiments if e.end > now]
        states = load_states(config, [variant_aliases(config, v) for e in live for v in e.variants])
        arms = {}
        for experiment in live:
            for v in experiment.variants:
                try:
                    policy = policy_loader(v.policy) if v.policy else default_policy
                except (OSError, ValueError) as exc:
                    raise NotReadyError(f"experiment '{experiment.name}', variant '{v.name}': policy {v.policy} "
                                        f"cannot be used: {exc}") from exc
                arms[experiment.name, v.name] = Arm(states[variant_aliases(config, v)], policy,
                                                    experiment.name, v.name, v.subject_line, v.content_block)
        return cls(experiments, Arm(states[config_aliases(config)], default_policy), arms)

    def all_arms(self) -> list[Arm]:
        """The default arm and every variant's."""
        return [self.default, *self.arms.values()]

    def route(self, customer_ids: list[str], now: datetime) -> list[Arm]:
        """The arm of each customer, in order (an experiment running now was live at startup, so
        its arms are loaded)."""
        experiment = self.experiments.running(now)
        if experiment is None:
            return [self.default] * len(customer_ids)
        return [self.arms[experiment.name, v] for v in assign_many(experiment, customer_ids)]
