"""The live control a server's settings ask for, built once by the composition root
(:func:`hybridllm.serve.app.create_app`): the hooks in their order (the capability filter right after
the decider, then the session rules among the models it allowed, then the hold's observation of
where the request really goes; the steering watch and the live estimates see each decision before
a budget cap may refuse it; the outcomes log remembers a request before its shadow call starts),
the hold's decider, and what the app serves beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from hybridllm.backends import Backend
from hybridllm.routing.capabilities import ModelCaps
from hybridllm.routing.estimates import ShadowPair
from hybridllm.routing.live import Hold, parse_hold
from hybridllm.routing.money import CostModel
from hybridllm.routing.money_knob import MoneyBudget
from hybridllm.stages.score import JUDGE_RUBRIC

from ..caps import parse_cap
from ..decision import Decider, ServingRouter
from ..errors import ServeConfigError
from ..hooks import Hook
from ..options import ServeOptions
from ..state import StateStore
from ..telemetry import Metrics
from ..upstreams import Upstreams
from .budget import Budget, BudgetHook
from .capabilities import CapabilityHook
from .estimates import QualityEstimates, estimates_families
from .hold import HoldDecider, HoldHook, HoldSync, hold_families
from .money import MoneyHook
from .outcomes import FeedbackDesk, OutcomesHook
from .sessions import SessionHook, session_hook
from .shadow import SIDES, JudgeScorer, RewardScorer, Shadow, ShadowHook, ShadowJob
from .steering import SteeringWatch


@dataclass
class LiveControl:
    """One server's live control (each piece None when its settings are off)."""

    hooks: list[Hook] = field(default_factory=list)
    estimates: QualityEstimates | None = None
    hold: Hold | None = None
    shadow: Shadow | None = None
    sync: HoldSync | None = None  # the hold's pairs shared through the state store (--state)
    desk: FeedbackDesk | None = None  # the outcomes log and the requests /v1/feedback can name
    steering: SteeringWatch | None = None
    budget: Budget | None = None
    sessions: SessionHook | None = None
    #: every model priced: what each costs per request on this traffic (the hold in money shares
    #: it), and the budget knob in money that reads it (docs/control.md)
    money: CostModel | None = None
    money_budget: MoneyBudget | None = None

    def decider(self, inner: Decider) -> Decider:
        """``inner``, wrapped by the hold's decider when a hold runs."""
        return inner if self.hold is None else HoldDecider(inner, self.hold)


def live_control(
    router: ServingRouter,
    upstreams: Upstreams,
    metrics: Metrics,
    opts: ServeOptions,
    judge: Backend | RewardScorer | None,
    store: StateStore,
) -> LiveControl:
    """What ``opts`` ask for: the steering watch (clients with keys), the live estimates and the hold
    (``--shadow-rate`` or ``--hold``), the budget caps, the outcomes log, the shadow checks; and
    their metric families on ``/metrics``."""
    live = LiveControl()
    fleet, ups = upstreams.fleet, upstreams.ups
    names = [u.who for u in ups]
    if fleet.models and all(m in opts.prices for m in fleet.models):  # budget in money (docs/control.md)
        live.money = CostModel([opts.prices[m] for m in fleet.models])
        live.money_budget = MoneyBudget(fleet, router.config.get("calibration") or [], live.money)
    if any(not c.unrestricted for c in opts.capabilities.values()):  # first: where the request can go
        caps = tuple(opts.capabilities.get(n) or ModelCaps(n) for n in names)
        live.hooks.append(CapabilityHook(caps, metrics, [u.api for u in ups]))
    if opts.sessions:  # then the session rules, among the models that can serve it
        live.sessions = session_hook(names, metrics, opts, store, len(opts.api_keys), [u.api for u in ups])
        live.hooks.append(live.sessions)
    if opts.api_keys:
        dear = {i for i in range(len(ups)) if i > 0 and fleet.costs[i] > fleet.costs[0]}
        live.steering = SteeringWatch(dear, lambda key: metrics.steering.labels(key).inc())
        live.hooks.append(live.steering)
    if opts.shadow_rate or opts.hold:
        live.hold = _hold(router, upstreams, opts, live.money)
        if live.hold is not None:  # observes where each request it routed really goes
            live.hooks.append(HoldHook(live.hold, names))
        live.estimates = QualityEstimates(fleet)
        live.hooks.append(live.estimates)
    if live.money is not None:  # learns every routed answer the hold does not settle itself
        live.hooks.append(MoneyHook(live.money, names))
    if opts.budget_caps:
        live.budget = Budget(
            [parse_cap(c) for c in opts.budget_caps], store, opts.prices, opts.on_cap, cheapest=0,
            limits=opts.limits,
        )  # fmt: skip
        live.hooks.append(BudgetHook(live.budget, upstreams))
    outcomes = None
    if opts.outcomes:
        live.desk = FeedbackDesk.open(opts)
        outcomes = OutcomesHook(live.desk, [u.who for u in ups])
        live.hooks.append(outcomes)
    if opts.shadow_rate:
        live.shadow = _shadow(upstreams, metrics, opts, judge, live.hold)
        live.hooks.append(ShadowHook(live.shadow))
        if live.estimates is not None:
            live.shadow.sinks.append(live.estimates.add_pair)
        if live.hold is not None:
            live.shadow.sinks.append(_feed(live.hold))
        if live.hold is not None and opts.state:
            live.sync = HoldSync(live.hold, store)
            live.shadow.sinks.append(live.sync.add)
        if outcomes is not None:  # a shadow record names its request; its prompt goes in the request record
            live.shadow.sinks.append(outcomes.add_pair)
    if live.estimates is not None:
        metrics.extra.append(partial(estimates_families, live.estimates))
    if live.hold is not None:
        metrics.extra.append(partial(hold_families, live.hold))
    return live


def _feed(hold: Hold) -> Callable[[ShadowPair, ShadowJob], None]:
    """The hold as a shadow sink: it goes on from every scored pair."""

    def add(pair: ShadowPair, job: ShadowJob) -> None:
        hold.add_pair(pair)

    return add


def _hold(router: ServingRouter, upstreams: Upstreams, opts: ServeOptions, money: CostModel | None) -> Hold | None:
    """The controller ``--hold`` asks for (a budget in ``money``, the server's, when every model is
    priced); refused with a shadow-less quality hold, or beside ``--default-knob`` (one owner for
    plain hybrid: docs/control.md)."""
    if not opts.hold:
        return None
    kind, target = parse_hold(opts.hold)
    cal = router.config.get("calibration") or []
    hold = Hold(kind, target, upstreams.fleet, cal, confidence=opts.hold_confidence, window_requests=opts.hold_window,
                money=money if kind == "budget" else None)  # fmt: skip
    if kind == "max_quality_drop" and not opts.shadow_rate:
        raise ServeConfigError("--hold max_quality_drop needs shadow checks (--shadow-rate and --judge)")
    if opts.default_knob:
        raise ServeConfigError(
            f"--default-knob {opts.default_knob} and --hold {opts.hold} both set what plain hybrid means: "
            "drop one (a hold owns plain hybrid while it runs)"
        )
    return hold


def _shadow(
    upstreams: Upstreams, metrics: Metrics, opts: ServeOptions, judge: Backend | RewardScorer | None, hold: Hold | None
) -> Shadow:
    if judge is None:
        raise ServeConfigError("--shadow-rate needs a judge (--judge SPEC)")
    fleet = upstreams.fleet
    return Shadow(
        opts.shadow_rate,
        judge if isinstance(judge, RewardScorer) else JudgeScorer(judge, opts.judge_rubric or JUDGE_RUBRIC),
        upstreams.ups, fleet.ref,
        concurrency=opts.shadow_concurrency, per_minute=opts.shadow_per_minute,
        count=metrics.count_shadow, price=metrics.shadow_cost,
        sides=_sides(opts, hold, len(fleet.models)),
        max_tokens=opts.shadow_max_tokens, max_prompt_chars=opts.shadow_max_prompt_chars,
        judge_name=opts.judge_name or str(getattr(judge, "who", None) or "judge"),
    )  # fmt: skip


def _sides(opts: ServeOptions, hold: Hold | None, n_models: int) -> str:
    """Which models a drawn request asks (``--shadow-sides``; default: ``policy`` where a quality hold
    over more than two models needs every model its policy picks, else ``pair``)."""
    needs = hold is not None and hold.kind == "max_quality_drop" and n_models > 2
    sides = opts.shadow_sides or ("policy" if needs else "pair")
    if sides not in SIDES:
        raise ServeConfigError(f"shadow_sides: expected one of {', '.join(SIDES)}, got {sides!r}")
    if needs and sides == "pair":
        raise ServeConfigError(
            f"--shadow-sides pair beside --hold {opts.hold} over {n_models} models: the hold needs every model "
            "its policy picks (--shadow-sides policy or all)"
        )
    return sides
