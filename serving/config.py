"""Settings of the send-time service, read from environment variables (``sendwise serve`` sets them).

| variable | meaning | default |
|---|---|---|
| ``SENDWISE_DATA`` | directory of contract tables (catalog and customers) | required |
| ``SENDWISE_SNAPSHOT`` | feature snapshot (parquet); built from the data when absent | none |
| ``SENDWISE_MLRUNS`` | MLflow store root (``MLFLOW_TRACKING_URI`` overrides) | ``mlruns`` |
| ``SENDWISE_CHURN_ALIAS``, ``SENDWISE_PROPENSITY_ALIAS``, ``SENDWISE_RECOMMENDER_ALIAS`` | registry aliases | ``champion`` |
| ``SENDWISE_EXPOSURE_LOG`` | append-only exposure log | ``exposures/exposures.jsonl`` |
| ``SENDWISE_API_KEY`` | when set, requests need header ``x-api-key`` with this value | none |
| ``SENDWISE_EXPOSURE_FSYNC`` | ``true``: force each exposure write to disk (survives a power cut) | ``false`` |
| ``SENDWISE_POLICY`` | next-best-action policy YAML | ``serving/policy.yaml`` |
| ``SENDWISE_CURRENCY`` | currency of catalog prices (ISO code) | ``GBP`` |
| ``SENDWISE_CONSENT`` | ``recorded``: email only with consent on record; ``unless-refused``: unless refused (see :mod:`serving.consent`) | ``recorded`` |
| ``SENDWISE_EXPERIMENTS`` | experiments YAML (see :mod:`experiments.config`); variants of the running one | none |
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

from serving.consent import ConsentRule


class ServeConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: Path
    snapshot: Path | None = None
    mlruns: Path = Path("mlruns")
    churn_alias: str = "champion"
    propensity_alias: str = "champion"
    recommender_alias: str = "champion"
    exposure_log: Path = Path("exposures/exposures.jsonl")
    exposure_fsync: bool = False
    api_key: SecretStr | None = None  # hidden in repr and dumps
    policy: Path | None = None
    currency: str = "GBP"
    experiments: Path | None = None
    consent: ConsentRule = ConsentRule.RECORDED

    @classmethod
    def from_env(cls) -> ServeConfig:
        data = os.environ.get("SENDWISE_DATA")
        if not data:
            raise RuntimeError("SENDWISE_DATA is not set: start the service with `sendwise serve --data DIR`.")
        env = {
            "snapshot": os.environ.get("SENDWISE_SNAPSHOT") or None,
            "mlruns": os.environ.get("SENDWISE_MLRUNS"),
            "churn_alias": os.environ.get("SENDWISE_CHURN_ALIAS"),
            "propensity_alias": os.environ.get("SENDWISE_PROPENSITY_ALIAS"),
            "recommender_alias": os.environ.get("SENDWISE_RECOMMENDER_ALIAS"),
            "exposure_log": os.environ.get("SENDWISE_EXPOSURE_LOG"),
            "exposure_fsync": os.environ.get("SENDWISE_EXPOSURE_FSYNC") or None,
            "api_key": os.environ.get("SENDWISE_API_KEY") or None,
            "policy": os.environ.get("SENDWISE_POLICY") or None,
            "currency": os.environ.get("SENDWISE_CURRENCY") or None,
            "experiments": os.environ.get("SENDWISE_EXPERIMENTS") or None,
            "consent": os.environ.get("SENDWISE_CONSENT") or None,
        }
        return cls(data=Path(data), **{k: v for k, v in env.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        env = {"SENDWISE_DATA": str(self.data.resolve()), "SENDWISE_MLRUNS": str(self.mlruns.resolve()),
               "SENDWISE_CHURN_ALIAS": self.churn_alias, "SENDWISE_PROPENSITY_ALIAS": self.propensity_alias,
               "SENDWISE_RECOMMENDER_ALIAS": self.recommender_alias,
               "SENDWISE_EXPOSURE_LOG": str(self.exposure_log.resolve()),
               "SENDWISE_EXPOSURE_FSYNC": str(self.exposure_fsync).lower()}
        if self.snapshot:
            env["SENDWISE_SNAPSHOT"] = str(self.snapshot.resolve())
        if self.api_key:
            env["SENDWISE_API_KEY"] = self.api_key.get_secret_value()
        if self.policy:
            env["SENDWISE_POLICY"] = str(self.policy.resolve())
        if self.experiments:
            env["SENDWISE_EXPERIMENTS"] = str(self.experiments.resolve())
        env["SENDWISE_CURRENCY"] = self.currency
        env["SENDWISE_CONSENT"] = self.consent.value
        return env
