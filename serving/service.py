"""The send-time service (BentoML): scores and product recommendations for the email renderer.

Start it with ``sendwise serve --data DIR`` (binds 127.0.0.1). Models, snapshot and catalog are
loaded in ``__init__`` (see :mod:`serving.state`), never at import, and loaded again in the background
when a served alias moves or the snapshot file changes (:mod:`serving.reload`): a request reads
:attr:`LiveModels.current` once and answers from it alone. Every request passes
:mod:`serving.metrics` (bounded labels) and :mod:`serving.guard` (API key, known paths, body checked
against the route's request model, one batch at a time) before BentoML sees it.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import random
from datetime import UTC, datetime

import bentoml
from redis.exceptions import RedisError
from starlette.responses import JSONResponse

from features.errors import InputError
from features.event_log import AppendResult, Event, parse_events
from features.online import OnlineFeatures
from serving import answers
from serving.clock import ServiceClock
from serving.config import ServeConfig, workers_from_env
from serving.experiment_config import ExperimentSet, load_experiments
from serving.exposures import ExposureLog
from serving.forgotten import FORGOTTEN, ForgottenCustomers
from serving.guard import protect
from serving.live import LiveProfiles
from serving.live_segments import LiveSegments
from serving.outbox import OutboxBusyError
from serving.policy import SCORE_SIGNALS, Policy
from serving.product_block import ProductBlock
from serving.reload import LiveModels, reload_seconds
from serving.schemas import (
    EventsAccepted,
    EventsRequest,
    ModelInfo,
    NextBestAction,
    NextBestActionBatch,
    NextBestActionBatchRequest,
    NextBestActionRequest,
    ProductBlockBatch,
    ProductBlockBatchRequest,
    ProductBlockRequest,
    Recommendations,
    RecommendationsBatch,
    RecommendBatchRequest,
    RecommendRequest,
    RuleOptions,
    Score,
    ScoreBatch,
    ScoreBatchRequest,
    ScoreRequest,
    SegmentMembership,
    SegmentsRequest,
)
from serving.segments import SegmentSet
from serving.state import ServingState
from serving.stream import consumer_from_env
from serving.variants import VariantRouter

# BentoML's TimeoutMiddleware schedules a timer per request that keeps the request's context, with its
# OpenTelemetry span (~4.6 kB in all), for traffic.timeout (60 s): under a flood of requests that is
# rate x 60 s of them. Without a tracing exporter the spans record nothing: don't make them (~0.9 kB
# then). OTEL_SDK_DISABLED=false keeps them for a shop that configures BentoML's tracing.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

logger = logging.getLogger(__name__)

THREADS = 4  # a batch holds one (one at a time, see serving.guard); single requests share the others


# BentoML's HTTP metrics are off: they label series by raw path (serving/metrics.py keeps the same
# series with bounded labels).
@bentoml.service(name="sendwise", workers=workers_from_env(), threads=THREADS, logging={"access": {"enabled": False}},
                 metrics={"enabled": False}, http={"host": "127.0.0.1"})
class Sendwise:
    """Routes: answers are built by :mod:`serving.answers`, exposures recorded by :mod:`serving.exposures`."""

    def __init__(self) -> None:
        config = ServeConfig.from_env()
        interval = reload_seconds()
        self.policy = policy = Policy.load(config.policy) if config.policy else Policy.load()
        experiments = load_experiments(config.experiments) if config.experiments else ExperimentSet()
        self.profiles: LiveProfiles | None = None  # attached to each router's tables as it is loaded
        self.live = LiveModels(config, experiments, lambda now: self._attach(VariantRouter.load(config, experiments,
                                                                                                  policy, now)))
        self.timezone = config.timezone
        self.forgotten = ForgottenCustomers(config.data)  # answered as unknown, logged without their id
        state = self.live.current.state
        clock = ServiceClock(config.clock, state.as_of)
        self.segment_set, self.segments = self._open_segments(config, clock, state)
        # the online store gets a copy of the data in a connection of its own, cut at the snapshot
        tables = state.tables.before(state.as_of)
        online = OnlineFeatures(tables, state.as_of, state.customers.config, snapshot=state.snapshot)
        self.profiles = LiveProfiles.open(config.open_event_log(), online, clock, tables,
                                          self.segments.replayed if self.segments else None, self._is_forgotten)
        self._attach(self.live.current.router)
        if self.segments is not None:
            self.profiles.on_events(self.segments.on_events)
            self.segments.start()
        self.profiles.start_following()
        self.consumer = consumer_from_env(self._ingest, timezone=config.timezone, clock=clock.now,
                                          conflicts=self.profiles.log.conflicts)
        if self.consumer is not None:
            self.consumer.start()
        self.exposures = ExposureLog(config.exposure_log, config.exposure_fsync)
        self.block_settings = config.block_settings  # currency, utm_source, utm_medium
        self.consent = config.consent
        self.rng = random.Random()
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, or each full collection rescans it (100+ ms pauses in a batch request).
        gc.freeze()
        atexit.register(gc.unfreeze)  # let it be freed normally at exit
        self.live.start(interval)

    def _open_segments(self, config: ServeConfig, clock: ServiceClock,
                       state: ServingState) -> tuple[SegmentSet | None, LiveSegments | None]:
        """The segments file, if one is set, and its online half (membership per event, triggers, outbox,
        webhook) in the one worker that holds the outbox (another worker's is None: it answers
        ``GET /segments`` and leaves the outbox to that one; every worker applies every event)."""
        if config.segments is None:
            return None, None
        segments = SegmentSet.load(config.segments, state.customers.config)
        webhook = ((config.webhook_url, config.webhook_secret.get_secret_value())
                   if config.webhook_url and config.webhook_secret else None)
        try:
            return segments, LiveSegments(segments, config.state_folder, clock, self._segment_values, webhook)
        except OutboxBusyError:
            if config.online_store is None:
                raise
            logger.info("segments: another worker holds the trigger outbox in %s; this one answers GET /segments "
                        "and leaves the outbox to it", config.state_folder)
            return segments, None

    def _segment_values(self, customer_id: str) -> dict | None:
        """What the segments' rules read of a customer now: features, and scores where a rule reads them."""
        if self.profiles is None or self.segment_set is None or self._is_forgotten(customer_id):
            return None
        features = self.profiles.features(customer_id)
        if features is None or not set(self.segment_set.signals) & set(SCORE_SIGNALS):
            return features
        scores = self.live.current.state.customers.scores(customer_id) or {}
        return features | {name: scores.get(name) for name in SCORE_SIGNALS}

    def _is_forgotten(self, customer_id: str) -> bool:
        return self.forgotten.mask([customer_id])[0] == FORGOTTEN

    def _ingest(self, events: list[Event]) -> AppendResult:
        """Log and apply ``events``, but none of a forgotten customer's (they are acknowledged, not kept)."""
        keys = self.forgotten.mask([e.customer_id for e in events])
        return self.profiles.ingest([e for e, key in zip(events, keys, strict=True) if key != FORGOTTEN])

    def _attach(self, router: VariantRouter) -> VariantRouter:
        """Answer touched customers of every arm of ``router`` from their live profiles."""
        if self.profiles is not None:
            for arm in router.all_arms():
                arm.state.customers.live = self.profiles.fresh_view
                arm.state.snapshot = arm.state.tables = None  # the online store has read them (and copied the rows)
        return router

    @property
    def state(self) -> ServingState:
        """The default arm's state in use now (a request takes ``self.live.current`` once instead)."""
        return self.live.current.state

    @property
    def router(self) -> VariantRouter:
        return self.live.current.router

    def reload_now(self) -> bool:
        """Check for a moved alias or a new snapshot now and swap it in (see :mod:`serving.reload`)."""
        return self.live.reload_now()

    @bentoml.on_shutdown
    def stop_reloading(self) -> None:
        self.live.stop()
        if self.consumer is not None:
            self.consumer.stop()
        if self.segments is not None:
            self.segments.stop()
        if self.profiles is not None:
            self.profiles.stop_following()

    def _log(self, exposures: list[dict]) -> str:
        """Append one request's exposures; a forgotten customer is logged as ``forgotten``, never by id."""
        return self.exposures.append_request(exposures, self.forgotten.mask([e["customer_id"] for e in exposures]))

    def _scores(self, customer_ids: list[str]) -> list[Score]:
        self.profiles.follow()
        return answers.scores(self.live.current.state, customer_ids, self.forgotten.mask(customer_ids))

    def _recommend(self, customer_ids: list[str], k: int, options: RuleOptions, log: bool = True,
                   state: ServingState | None = None) -> list[Recommendations]:
        state = self.live.current.state if state is None else state
        self.profiles.follow()
        recs = answers.recommendations(state, customer_ids, self.forgotten.mask(customer_ids), k, options)
        if log:
            self._log(answers.recommend_exposures(recs, "recommend", state))
        return recs

    @bentoml.api(route="/score")
    def score(self, request: ScoreRequest, /) -> Score:
        """Churn and purchase probabilities, risk band, segment, stage and reasons of one customer."""
        return self._scores([request.customer_id])[0]

    @bentoml.api(route="/score_batch")
    def score_batch(self, request: ScoreBatchRequest, /, ctx: bentoml.Context = None) -> ScoreBatch:
        """The same for up to 10,000 customers, as ``{"results": [...]}``."""
        return answers.batch_response(ScoreBatch.model_construct(results=self._scores(request.customer_ids)),
                                      ctx is not None)

    @bentoml.api(route="/recommend")
    def recommend(self, request: RecommendRequest, /) -> Recommendations:
        """Top-k products with score, source and catalog fields, after the business rules."""
        return self._recommend([request.customer_id], request.k, request.rules)[0]

    @bentoml.api(route="/recommend_batch")
    def recommend_batch(self, request: RecommendBatchRequest, /, ctx: bentoml.Context = None) -> RecommendationsBatch:
        """The same for up to 10,000 customers and 20,000 customers x k (campaign precompute), as
        ``{"results": [...]}``."""
        return answers.batch_response(RecommendationsBatch.model_construct(
            results=self._recommend(list(dict.fromkeys(request.customer_ids)), request.k, request.rules)),
            ctx is not None)

    def _product_blocks(self, customer_ids: list[str], k: int, options: RuleOptions, campaign: str,
                        heading: str | None) -> list[ProductBlock]:
        state = self.live.current.state
        blocks = answers.product_blocks(self._recommend(customer_ids, k, options, log=False, state=state), campaign,
                                        heading, state, self.block_settings)
        self._log(answers.recommend_exposures(blocks, "product_block", state))
        return blocks

    @bentoml.api(route="/product_block")
    def product_block(self, request: ProductBlockRequest, /) -> ProductBlock:
        """Everything an email needs to show recommended products, with an email-safe HTML fragment."""
        return self._product_blocks([request.customer_id], request.k, request.rules, request.campaign,
                                    request.heading)[0]

    @bentoml.api(route="/product_block_batch")
    def product_block_batch(self, request: ProductBlockBatchRequest, /, ctx: bentoml.Context = None) -> ProductBlockBatch:
        """The same for up to 10,000 customers and 20,000 customers x k, as ``{"results": [...]}``."""
        return answers.batch_response(ProductBlockBatch.model_construct(results=self._product_blocks(
            list(dict.fromkeys(request.customer_ids)), request.k, request.rules, request.campaign, request.heading)),
            ctx is not None)

    def _next_best_actions(self, customer_ids: list[str], k: int, campaign: str) -> list[NextBestAction]:
        """Decide per customer with their arm's policy and models (the running experiment's variant,
        else the defaults); one exposure record per customer, logged before answering."""
        self.profiles.follow()
        arms = self.live.current.router.route(customer_ids, datetime.now(UTC).replace(tzinfo=None))
        results, exposures = answers.next_best_actions(arms, customer_ids, self.forgotten.mask, k, campaign, self.rng,
                                                       self.consent, self.block_settings)
        request_id = self._log(exposures)
        for answer in results:
            answer.request_id = request_id
        return results

    @bentoml.api(route="/next_best_action")
    def next_best_action(self, request: NextBestActionRequest, /) -> NextBestAction:
        """The action the policy (serving/policy.yaml) picks, with offer, content blocks, product
        block, reasons, model versions and the probability of the pick."""
        return self._next_best_actions([request.customer_id], request.k, request.campaign)[0]

    @bentoml.api(route="/next_best_action_batch")
    def next_best_action_batch(self, request: NextBestActionBatchRequest, /,
                               ctx: bentoml.Context = None) -> NextBestActionBatch:
        """The same for up to 10,000 customers and 20,000 customers x k (campaign precompute), as
        ``{"results": [...]}``."""
        return answers.batch_response(NextBestActionBatch.model_construct(results=self._next_best_actions(
            list(dict.fromkeys(request.customer_ids)), request.k, request.campaign)), ctx is not None)

    @bentoml.api(route="/events")
    def events(self, request: EventsRequest, /) -> EventsAccepted:
        """Take a batch of events (all or none): durably logged before the answer, applied once (an
        ``event_id`` seen before is acknowledged and ignored); the next answer for their customers
        reflects them."""
        try:
            events = parse_events(request.model_dump(), timezone=self.timezone, now=self.profiles.clock.now())
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        try:
            result = self._ingest(events)  # an id held for a different event: nothing written, in one step
        except (OSError, RedisError) as exc:  # a full disk, the online store away: nothing acknowledged
            return JSONResponse({"error": f"the event log could not take the batch ({type(exc).__name__}: {exc}); "
                                          "nothing of it was acknowledged: send it again (a resent event_id is "
                                          "taken once)."}, 503)
        if conflicts := result.conflicts:
            shown = ", ".join(repr(c) for c in conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5
                                                                 else "")
            return JSONResponse({"error": f"event_id {shown} already names a different event (another customer, "
                                          "type, time, product or lines); nothing of this batch was taken. Give each "
                                          "event an id of its own; resending the same event is fine.",
                                 "conflicts": conflicts}, 409)
        return EventsAccepted(accepted=len(result.new), duplicates=result.duplicates,
                              forgotten=len(events) - len(result.new) - len(result.duplicates),
                              now=self.profiles.clock.now().isoformat())

    @bentoml.api(route="/segments")
    def segments_of(self, request: SegmentsRequest, /) -> SegmentMembership:
        """The segments of ``segments.yaml`` a customer is in now (also ``GET /segments/{customer_id}``)."""
        if self.segment_set is None:
            return JSONResponse({"error": "no segments file: set SENDWISE_SEGMENTS (or put segments.yaml in the "
                                          "project) and restart the service"}, 404)
        [key] = self.forgotten.mask([request.customer_id])
        self.profiles.follow()
        values = None if key == FORGOTTEN else self._segment_values(key)
        members = None if values is None else self.segment_set.members(values)
        return SegmentMembership(customer_id=request.customer_id, known=members is not None, segments=members or [])

    @bentoml.api(route="/ping")
    def ping(self) -> dict:
        """A trivial endpoint: the latency floor of this service, for benchmarks."""
        return {"ok": True}

    @bentoml.api(route="/model_info")
    def model_info(self) -> ModelInfo:
        """Versions, training dates and headline holdout metrics of the models in use, and when they were loaded."""
        live = self.live.current
        info = answers.model_info(live.state, live.router.experiments.running(datetime.now(UTC).replace(tzinfo=None)),
                                  live.loaded_at)
        info.now, info.clock = self.profiles.clock.now().isoformat(), self.profiles.clock.mode.value
        info.worker = os.getpid()
        return info


protect(Sendwise, ServeConfig.from_env)  # metrics and guard (API key of the service's settings) before every route
