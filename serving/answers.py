"""The routes' answers, built from a :class:`serving.state.ServingState`: recommendations, product
blocks with the reason of each product, and next best actions with their exposure records.

Answers are built with ``model_construct``: every field comes from typed arrays of our own, and
validating thousands of nested objects per batch would double its latency.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel
from starlette.responses import Response

from features.links import safe_http_url
from features.schema import CATEGORY, IMAGE_URL, NAME, PRICE, URL
from serving.consent import ConsentRule, enforce_consent
from serving.experiment_config import Experiment
from serving.exposures import exposure_record
from serving.lookup import PRECOMPUTED_K
from serving.policy import SUPPRESS, decide
from serving.product_block import (
    BlockItem,
    BlockSettings,
    ProductBlock,
    clean_text,
    format_price,
    render_html,
    with_utm,
)
from serving.schemas import (
    Item,
    LoadedClassifier,
    LoadedModels,
    LoadedRecommender,
    ModelInfo,
    NextBestAction,
    Recommendations,
    RuleOptions,
    Score,
)
from serving.state import ServingState
from serving.variants import Arm

DEFAULT_RULES = RuleOptions()


def recommendations(state: ServingState, customer_ids: list[str], keys: list[str], k: int,
                    options: RuleOptions) -> list[Recommendations]:
    """Precomputed lists for the default rules (k <= 20), the full rule engine otherwise; ``keys`` are
    the customer ids as the state knows them (a forgotten customer's masked)."""
    lookup = state.lookup
    if options == DEFAULT_RULES and k <= PRECOMPUTED_K:
        picks = {key: lookup.default_picks(key, k) for key in keys}
    else:  # the request model has checked the rules
        picks = lookup.frame_picks(state.recommendations.recommend(pd.Index(list(dict.fromkeys(keys))), k,
                                                                   options.rules()))
    catalog, product_ids = lookup.catalog, lookup.product_ids
    out = []
    for cid, key in zip(customer_ids, keys, strict=True):
        items = [Item.model_construct(rank=rank, product_id=product_ids[p.product], score=p.score, source=p.source,
                      name=catalog[NAME][p.product], category=catalog[CATEGORY][p.product],
                      price=catalog[PRICE][p.product], image_url=catalog[IMAGE_URL][p.product])
                 for rank, p in enumerate(picks.get(key, []), start=1)]
        out.append(Recommendations.model_construct(customer_id=cid, known=key in state.customers, items=items,
                                                   model_version=state.recommender_version))
    return out


def recommend_exposures(recs: list[Recommendations] | list[ProductBlock], action: str,
                        state: ServingState) -> list[dict]:
    """One exposure record per recommendation list or product block shown."""
    versions = {"recommender": state.recommender_version}
    return [exposure_record(r.customer_id, action, [i.product_id for i in r.items], 1.0, versions) for r in recs]


def because(recs: Recommendations, state: ServingState) -> dict[str, str]:
    """product -> "Because you bought X" for the model's picks, X the customer's bought product
    most similar to the pick under the model."""
    lookup, model = state.lookup, state.recommender
    picks = [i.product_id for i in recs.items if i.source != "popular"]
    history = lookup.bought(recs.customer_id) if recs.known and picks else []
    if not len(history):
        return {}
    best = model.most_similar(np.array([lookup.column[p] for p in picks]), history)
    if best is None:
        return {}
    names = lookup.catalog[NAME]
    return {pick: f"Because you bought {names[history[b]] or lookup.product_ids[history[b]]}"
            for pick, b in zip(picks, best, strict=True)}


def product_blocks(recs: list[Recommendations], campaign: str, heading: str | None, state: ServingState,
                   settings: BlockSettings) -> list[ProductBlock]:
    """A product block per recommendation list: items with price (in the shop's currency), image,
    link tracked with the shop's UTM parameters, and reason; and the email-safe HTML."""
    lookup, currency = state.lookup, settings.currency
    blocks = []
    heading = clean_text(heading).strip() or None
    for r in recs:
        reasons = because(r, state)
        # Every text is one clean line and every URL absolute http(s) or None, whatever the
        # catalog held (serving.state has cleaned it already; this holds for any state).
        items = [BlockItem.model_construct(product_id=i.product_id, name=clean_text(i.name or i.product_id),
                           price=clean_text(format_price(i.price, currency)) if i.price is not None else None,
                           image_url=safe_http_url(i.image_url),
                           link=with_utm(lookup.catalog[URL][lookup.column[i.product_id]], campaign,
                                         source=settings.utm_source, medium=settings.utm_medium),
                           reason=clean_text(reasons.get(
                               i.product_id, "Popular right now" if i.source == "popular" else "Picked for you")))
                 for i in r.items]
        title = heading or ("Picked for you" if r.known else "Popular right now")
        blocks.append(ProductBlock.model_construct(customer_id=r.customer_id, known=r.known, heading=title, items=items,
                                                   html=render_html(title, items), model_version=r.model_version))
    return blocks


def next_best_actions(arms: list[Arm], customer_ids: list[str], mask: Callable[[list[str]], list[str]], k: int,
                      campaign: str, rng: random.Random, consent: ConsentRule,
                      settings: BlockSettings) -> tuple[list[NextBestAction], list[dict]]:
    """Per customer, in order, the answer of their arm's policy and models (``arms[i]`` is customer i's:
    the running experiment's variant, else the defaults) and its exposure record; the answers'
    ``request_id`` is left empty. ``mask`` gives the customer ids as the states know them."""
    groups: dict[int, tuple[Arm, list[int]]] = {}
    for i, arm in enumerate(arms):
        groups.setdefault(id(arm), (arm, []))[1].append(i)
    decided: dict[int, tuple[NextBestAction, dict]] = {}
    for arm, rows in groups.values():
        ids = [customer_ids[i] for i in rows]
        decided.update(zip(rows, _arm_actions(arm, ids, mask(ids), k, campaign, rng, consent, settings), strict=True))
    results, exposures = zip(*(decided[i] for i in range(len(customer_ids))), strict=True)
    return list(results), list(exposures)


def _arm_actions(arm: Arm, customer_ids: list[str], keys: list[str], k: int, campaign: str,
                 rng: random.Random, consent: ConsentRule,
                 settings: BlockSettings) -> list[tuple[NextBestAction, dict]]:
    """(answer, exposure record) per customer of one arm."""
    state = arm.state
    signals = [state.customers.signals(key) for key in keys]
    # Consent is checked last, after the policy, exploration and the experiment: whatever they
    # say, a customer without consent on record, or unsubscribed, gets "suppress".
    decisions = [enforce_consent(decide(arm.policy, s, rng), s, consent) for s in signals]
    wanted = [(c, key) for c, key, d in zip(customer_ids, keys, decisions, strict=True)
              if "product_block" in d.content_blocks]
    blocks = {}
    if wanted:
        recs = recommendations(state, [c for c, _ in wanted], [key for _, key in wanted], k, RuleOptions())
        blocks = {b.customer_id: b for b in product_blocks(recs, campaign, None, state, settings)}
    versions = state.versions
    out = []
    for c, key, d in zip(customer_ids, keys, decisions, strict=True):
        block = blocks.get(c)
        fields = d.model_dump()
        if arm.content_block and d.action != SUPPRESS:
            fields["content_blocks"] = [arm.content_block, *fields["content_blocks"]]
        answer = NextBestAction.model_construct(
            customer_id=c, known=key in state.customers, request_id="", product_block=block, model_versions=versions,
            experiment=arm.experiment, variant=arm.variant,
            subject_line=arm.subject_line if d.action != SUPPRESS else None,
            score_reasons=(state.customers.scores(key) or {}).get("reasons", []), **fields)
        out.append((answer, exposure_record(c, d.action, [i.product_id for i in block.items] if block else [],
                                            d.probability, versions, arm.experiment, arm.variant)))
    return out


def batch_response(batch: BaseModel, over_http: bool) -> BaseModel | Response:
    """A batch's answer: the model itself when called in process; over HTTP, its JSON already, made
    here in the worker's thread one result at a time. BentoML would serialise it in one call on the
    event loop, and pydantic holds the interpreter for the whole of it: 20 MB (a maximal batch)
    stopped every other request for 0.1-0.2 s."""
    if not over_http:
        return batch
    results = b",".join(r.model_dump_json().encode() for r in batch.results)
    return Response(b'{"results":[' + results + b"]}", media_type="application/json")


def scores(state: ServingState, customer_ids: list[str], keys: list[str]) -> list[Score]:
    """Scores, band, segment, stage and reasons per customer; an unknown one is a prospect."""
    versions = {k: v for k, v in state.versions.items() if k != "recommender"}
    out = []
    for customer_id, key in zip(customer_ids, keys, strict=True):
        record = state.customers.scores(key)
        if record is None:
            out.append(Score(customer_id=customer_id, known=False, lifecycle_stage="prospect",
                             reasons=["unknown customer: no history before the snapshot"], model_versions=versions))
        else:
            out.append(Score(customer_id=customer_id, known=True, model_versions=versions, **record))
    return out


def model_info(state: ServingState, running: Experiment | None, loaded_at: datetime | None = None) -> ModelInfo:
    """Versions, provenance (project, data fingerprint, trained through), training dates and headline
    holdout metrics of the loaded models, and when they were loaded (UTC)."""
    classifiers = {}
    for name, bundle in (("churn", state.churn), ("propensity", state.propensity)):
        meta = bundle.meta
        classifiers[name] = LoadedClassifier(
            version=str(meta.get("version")), project=meta.get("project"), data_fingerprint=meta.get("data_fingerprint"),
            trained_through=meta.get("trained_through"), trained_as_of=meta.get("trained_as_of"),
            holdout_roc_auc=(meta.get("holdout_metrics") or {}).get("roc_auc"))
    provenance = state.recommender_provenance
    recommender = LoadedRecommender(version=state.recommender_version, project=provenance.project,
                                    data_fingerprint=provenance.data_fingerprint, trained_through=provenance.through,
                                    kind=state.recommender.kind)
    return ModelInfo(snapshot_as_of=state.as_of.isoformat(), customers=len(state.customers),
                     products=len(state.recommendations.products),
                     models=LoadedModels(recommender=recommender, **classifiers),
                     experiment=running.name if running else None,
                     loaded_at=loaded_at.isoformat(timespec="seconds") if loaded_at else None)
