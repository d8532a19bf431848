"""The controller that holds a target on live traffic (docs/control.md).

Pure numbers, no I/O: the serving layer feeds it each routed request's scores and decision, and the
shadow pairs (:mod:`hybridllm.routing.estimates`, where the intervals are); it gives back the
threshold that holds the operator's target.

- :class:`Hold` is the controller: ``budget`` and ``cost_advantage`` targets need no labels (the
  recent scores fix the threshold that meets them, corrected by the running realised error); with a
  :class:`~hybridllm.routing.money.CostModel`, ``budget`` is held in money: each request's own cost
  on every model (estimated before its call, then from its usage: :meth:`Hold.settle`);
  ``max_quality_drop`` uses the recent shadow pairs as a sliding validation set and, by default, the
  threshold whose one-sided upper bound on the drop over the next window of requests meets the target.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from hybridllm.errors import UsageError

from .estimates import PairArrays, ShadowPair, drop_curve, realised_drop, spend_curve
from .money import CostModel
from .money_knob import money_rows
from .policy import Fleet, sweep_arrays

HOLD_KINDS = ("max_quality_drop", "budget", "cost_advantage")
#: the requests a spend or share hold repays its running error over (:meth:`Hold._spend_step`); in
#: money, decisions differ in size (one long answer from the reference is worth many short ones),
#: and a faster repayment keeps 200-request windows closer (``benchmarks/hold_money.py``: 10 and
#: 20 requests left more windows outside ±2 pp of the target)
HORIZON = 20.0
MONEY_HORIZON = 5.0


class _Spent:
    """One request routed under a money hold: the model it went to, its cost on every model (the
    estimate before its call until :meth:`Hold.settle` gives the one after it) and always on the
    reference (``ref``: ``costs[ref]``, unless a session moved the request, whose history
    always-reference would have kept cached: ``premium``, the re-read, is left out of it), its
    estimated prompt tokens, and whether it is in the realised window and in the running error."""

    __slots__ = ("costs", "counted", "in_window", "picked", "premium", "prompt", "ref")

    def __init__(self, picked: int, costs: np.ndarray, ref: float, premium: float, prompt: float | None) -> None:
        self.picked, self.costs, self.ref, self.premium, self.prompt = picked, costs, ref, premium, prompt
        self.in_window = self.counted = False


class Hold:
    """Holds ``kind`` (one of :data:`HOLD_KINDS`) at ``target`` (%) by moving the threshold plain
    ``hybrid`` requests are routed with.

    ``calibration``: the artifact's calibration rows; the threshold never leaves their range and
    starts at the calibrated point for the target. It moves once ``min_requests`` routed requests
    (``min_pairs`` shadow pairs for the quality target) are in, by at most ``max_step`` per move: a
    spend or share target after every request (the curve of spend against threshold on the last
    ``window`` requests' scores is redrawn every ``every`` requests; the aim is the target less the
    running error of the decisions made, repaid over ``horizon`` requests, :data:`HORIZON` or in
    money :data:`MONEY_HORIZON` when None: see :meth:`_spend_step`),
    the quality target every ``quality_every`` requests. ``confidence``: for the quality target, the
    one-sided level of the upper bound that must meet it (0.5: the point estimate).
    ``window_requests``: the bound is for the drop over the next that many requests (a prediction
    bound: the estimate's uncertainty plus the noise of so few requests), so that the target holds
    over any such stretch with that confidence; 0: for the recent traffic's mean drop.

    ``money``: hold ``budget`` in money, not in the fleet's relative costs: the spend is
    Σ cost of the model each request went to / Σ its cost on the reference, each request priced on
    every model by ``money`` (:meth:`observe` takes its estimated prompt tokens; :meth:`settle`, its
    usage once answered), and the curve is drawn from the recent requests' own costs."""

    def __init__(
        self,
        kind: str,
        target: float,
        fleet: Fleet,
        calibration: Sequence[dict[str, Any]],
        *,
        window: int = 500,
        feedback: int = 200,
        pair_window: int = 1000,
        min_requests: int = 100,
        min_pairs: int = 40,
        every: int = 20,
        quality_every: int = 50,
        max_step: float = 0.05,
        confidence: float = 0.95,
        window_requests: int = 200,
        horizon: float | None = None,
        leak: float = 1000.0,
        money: CostModel | None = None,
    ) -> None:
        if kind not in HOLD_KINDS:
            raise UsageError(f"--hold: unknown target {kind!r}; expected one of {', '.join(HOLD_KINDS)}")
        if not (0 <= target <= 100 and math.isfinite(target)):
            raise UsageError(f"--hold {kind}={target}: expected a percentage in 0..100")
        if kind == "budget" and not fleet.costs_given and money is None:
            raise UsageError("--hold budget needs the models' costs (a models file with prices or costs)")
        if money is not None and len(money.prices) != len(fleet.models):
            raise UsageError(f"--hold: prices for {len(money.prices)} models, the fleet has {len(fleet.models)}")
        if not 0.5 <= confidence < 1:
            raise UsageError(f"--hold-confidence {confidence}: expected 0.5 <= c < 1")
        if not calibration:
            raise UsageError("--hold needs a router with a calibration table")
        self.kind, self.target, self.fleet = kind, float(target), fleet
        self.grid = np.array(sorted({float(r["threshold"]) for r in calibration}), dtype=np.float64)
        self.lo, self.hi = float(self.grid[0]), float(self.grid[-1])
        self.min_requests, self.min_pairs, self.every = min_requests, min_pairs, every
        self.quality_every = quality_every
        self.horizon_requests = int(window_requests)
        if horizon is None:
            horizon = MONEY_HORIZON if money is not None and kind == "budget" else HORIZON
        self.max_step, self.horizon, self.leak = max_step, horizon, leak
        self.z = NormalDist().inv_cdf(confidence)
        self.confidence = confidence
        self.scores: deque[tuple[float, ...]] = deque(maxlen=window)
        # the model each of the last `feedback` routed requests went to, and their held value's sum
        self.picked: deque[int] = deque(maxlen=feedback)
        self._held_sum = 0.0
        self._debt = 0.0  # Σ (value - target) over the decisions made, leaking 1/leak per request
        self._curve: tuple[np.ndarray, np.ndarray] | None = None
        self.pairs: deque[ShadowPair] = deque(maxlen=pair_window)
        self.pairs_from = "this process"
        self.seen = 0
        self.money = money if kind == "budget" else None
        self._spent: deque[_Spent] = deque(maxlen=window)  # beside `scores`: their costs on every model
        self._window: deque[_Spent] = deque(maxlen=feedback)  # the realised spend's requests
        self._open: OrderedDict[int, _Spent] = OrderedDict()  # by ticket, until settled (at most 4 windows)
        self._served = self._ref_cost = 0.0  # Σ over `_window`: cost of the model picked, on the reference
        self.threshold = self._calibrated(calibration)
        self.reason = f"hold {kind} {target:g}: calibrated start"
        self.estimate: tuple[float, float, float] | None = None  # the held measure now, with its bound

    def recalibrate(self, calibration: Sequence[dict[str, Any]]) -> None:
        """Re-anchor on a new router's calibration (a router swapped in while serving): the range and
        the starting point of the threshold are the new calibration's, and what was measured in the
        old router's scores (the recent scores, the spend curve, the shadow pairs' scores, the
        running error) is dropped; the realised decisions (which model served) are kept."""
        if not calibration:
            raise UsageError("--hold needs a router with a calibration table")
        self.grid = np.array(sorted({float(r["threshold"]) for r in calibration}), dtype=np.float64)
        self.lo, self.hi = float(self.grid[0]), float(self.grid[-1])
        self.scores.clear()
        self._spent.clear()
        self.pairs.clear()
        self._curve, self._debt, self.estimate = None, 0.0, None
        self.threshold = self._calibrated(calibration)
        self.reason = f"hold {self.kind} {self.target:g}: calibrated start (a new router)"

    def _calibrated(self, calibration: Sequence[dict[str, Any]]) -> float:
        key = {"max_quality_drop": "quality_drop", "budget": "cost", "cost_advantage": "cost_advantage"}[self.kind]
        rows = sorted(calibration, key=lambda r: -float(r["threshold"]))  # rising savings
        if self.kind == "max_quality_drop":
            ok = [r for r in rows if float(r["quality_drop"]) <= self.target + 1e-9]
            return float(ok[-1]["threshold"]) if ok else self.hi
        if self.money is not None:  # in money: the rows' shares of the models at their typical costs
            priced = money_rows(rows, self.money.typical(), self.fleet.ref)
            if priced:
                return float(min(priced, key=lambda r: abs(r["cost"] - self.target))["threshold"])
        rows = [r for r in rows if key in r]
        if not rows:
            return self.hi
        best = min(rows, key=lambda r: abs(float(r[key]) - self.target))
        return float(best["threshold"])

    # --- fed by the serving layer -------------------------------------------------------------
    def observe(
        self, scores: Sequence[float], picked: int, prompt_tokens: float | None = None, moved: bool = False
    ) -> int:
        """One routed plain-``hybrid`` request: its candidate scores and the model it went to; in
        money, its estimated prompt tokens (:func:`hybridllm.routing.money.estimate_prompt_tokens`;
        None: a typical prompt) and whether a session moved it to ``picked`` from another model (its
        history is then re-read uncached there: priced with no cached tokens on ``picked``; the
        reference's side, always-reference, keeps the typical cache). Returns the request's ticket
        for :meth:`settle`."""
        self.scores.append(tuple(scores))
        self.seen += 1
        if self.money is not None:
            self._spend(int(picked), prompt_tokens, moved)
        else:
            if len(self.picked) == self.picked.maxlen:
                self._held_sum -= self._value_of(self.picked[0])
            self.picked.append(int(picked))
            self._held_sum += self._value_of(int(picked))
            if self.kind != "max_quality_drop" and len(self.picked) >= self.min_requests:
                self._debt = self._debt * (1.0 - 1.0 / self.leak) + self._value_of(int(picked)) - self.target
        if self.kind == "max_quality_drop":
            if self.seen % self.quality_every == 0:
                self._move(*self._quality_step())
            return self.seen
        if self.seen % self.every == 0 or self._curve is None:
            self._refresh_curve()
        self._move(*self._spend_step())
        return self.seen

    def settle(self, ticket: int, usage: object, model: int | None = None) -> bool:
        """The ``usage`` the upstream reported for the request :meth:`observe` gave ``ticket``: in
        money, the request is priced again from it (its own cost, and every other model's from its
        own prompt and answer) and the realised spend and running error take the difference. False
        (nothing changes) without a money hold, for a ticket unknown or settled already, or for a
        usage without counts (the estimate stands). ``model``: the fleet index of the model that
        answered when it is not the one routed to (a fallback, a session's pin)."""
        e = self._open.pop(ticket, None) if self.money is not None else None
        if e is None or self.money is None:
            return False
        picked = e.picked if model is None or not 0 <= model < len(self.fleet.models) else int(model)
        new = self.money.after(picked, usage, e.prompt)
        if new is None:
            return False
        ref = self.fleet.ref
        ref_cost = max(float(new[ref]) - e.premium, 0.0)  # a moved request: its history cached always-reference
        d_served, d_ref = new[picked] - e.costs[e.picked], ref_cost - e.ref
        e.picked = picked
        if e.in_window:
            self._served += d_served
            self._ref_cost += d_ref
        if e.counted:
            self._debt += self._excess(d_served, d_ref)
        e.costs, e.ref = new, ref_cost
        return True

    def _spend(self, picked: int, prompt: float | None, moved: bool = False) -> None:
        assert self.money is not None
        ref = self.fleet.ref
        costs = self.money.before(prompt)
        ref_cost, premium = float(costs[ref]), 0.0
        if moved:  # the model it moved to has none of its history cached (always-reference would have)
            uncached = self.money.before(prompt, cached_tokens=0.0)
            costs[picked], premium = uncached[picked], float(uncached[ref] - ref_cost)
        e = _Spent(picked, costs, ref_cost, premium, prompt)
        self._spent.append(e)
        if len(self._window) == self._window.maxlen:
            old = self._window[0]
            old.in_window = False
            self._served -= old.costs[old.picked]
            self._ref_cost -= old.ref
        self._window.append(e)
        e.in_window = True
        self._served += e.costs[picked]
        self._ref_cost += e.ref
        self._open[self.seen] = e
        while len(self._open) > 4 * (self._spent.maxlen or 1):
            self._open.popitem(last=False)
        if len(self._window) >= self.min_requests:
            e.counted = True
            self._debt = self._debt * (1.0 - 1.0 / self.leak) + self._excess(e.costs[picked], e.ref)

    def _excess(self, served: float, ref: float) -> float:
        """A request's part of the running error in money, in % of the recent mean request's cost on
        the reference (the unit of the relative hold's decisions): 100 · served - target · ref."""
        mean = self._ref_cost / max(len(self._window), 1)
        return (100.0 * served - self.target * ref) / mean if mean > 0 else 0.0

    def add_pair(self, pair: ShadowPair) -> None:
        self.pairs.append(pair)

    def replace_pairs(self, pairs: Sequence[ShadowPair], source: str) -> None:
        """The pairs of every replica (the shared list), in place of this process's own."""
        self.pairs.clear()
        self.pairs.extend(pairs)
        self.pairs_from = source

    # --- the control step ---------------------------------------------------------------------
    def _move(self, want: float | None, why: str) -> None:
        if want is None:
            return
        want = min(max(want, self.lo), self.hi)
        delta = want - self.threshold
        step = max(-self.max_step, min(self.max_step, delta))
        self.threshold = float(self.threshold + step)
        self.reason = f"hold {self.kind} {self.target:g}: {why}" + (" (step bounded)" if abs(step) < abs(delta) else "")

    def _value_of(self, picked: int) -> float:
        """A decision's contribution to the held spend (% of the reference's cost) or share away."""
        if self.kind == "budget":
            return self.fleet.costs[picked] / self.fleet.costs[self.fleet.ref] * 100.0
        return 0.0 if picked == self.fleet.ref else 100.0

    def _refresh_curve(self) -> None:
        """Spend (or share away) against threshold on the recent scores: rows by falling threshold,
        the value non-increasing (budget) or non-decreasing (share away) along them; in money, each
        request at its own costs (the value need not fall monotonically then)."""
        if len(self.scores) < self.min_requests:
            return
        s = np.array(self.scores, dtype=np.float64)
        if self.money is not None:
            costs = np.array([e.costs for e in self._spent])
            refs = np.array([e.ref for e in self._spent])
            # the sums anew, so that float additions and removals never drift
            self._served = float(sum(e.costs[e.picked] for e in self._window))
            self._ref_cost = float(sum(e.ref for e in self._window))
            g = np.unique(np.concatenate([s[(s >= self.lo) & (s <= self.hi)], [self.lo, self.hi]]))[::-1]
            value = spend_curve(s, costs, self.fleet.ref, g, refs)
            ok = ~np.isnan(value)
            if ok.any():
                self._curve = (g[ok], value[ok])
            return
        thresholds, cost, _, shares = sweep_arrays(s, np.zeros((len(s), len(self.fleet.models))), self.fleet)
        ok = (thresholds >= self.lo) & (thresholds <= self.hi)
        if ok.any():
            value = cost if self.kind == "budget" else 100.0 - shares[:, self.fleet.ref]
            self._curve = (thresholds[ok], value[ok])

    def _spend_step(self) -> tuple[float | None, str]:
        """A spend or share target is judged on the decisions already made, and one decision is 0 or
        100 % away (or a model's whole cost): aiming at the target alone leaves a random walk around
        it. The aim is the target less the running error (the leaky sum of value - target over the
        decisions, in %·requests) repaid over ``horizon`` requests, so the error of any stretch of
        requests stays of the order of ``horizon`` decisions' worth, whatever its length."""
        recent = len(self._window) if self.money is not None else len(self.picked)
        if self._curve is None or recent < self.min_requests:
            return None, ""
        realised = self.realised()
        self.estimate = (realised, realised, realised)
        aim = self.target - self._debt / self.horizon
        thresholds, value = self._curve
        i = int(np.argmin(np.abs(value - aim)))
        return float(thresholds[i]), f"last {recent} requests at {realised:.1f} %, aiming at {aim:.1f} %"

    def realised(self) -> float:
        """The held spend (% of always-reference) or share away from the reference, recent requests;
        in money, Σ cost served / Σ cost on the reference over them."""
        if self.money is not None:
            return 100.0 * self._served / self._ref_cost if self._ref_cost > 0 else 0.0
        return self._held_sum / max(len(self.picked), 1)

    def _shift(self, scores: np.ndarray) -> np.ndarray:
        """Importance weights that make the pairs (their candidate ``scores``) look like the recent
        traffic: the ratio of the recent requests' share to the pairs' share in each decile of the
        pairs' best candidate score. The mix of queries moves faster than the pairs accumulate (one
        in 1 / rate requests), and the router's scores see the move at once; quality given the
        score is assumed to move slower."""
        s = scores.max(axis=1)
        if not self.scores:
            return np.ones(len(s))
        recent = np.array(self.scores, dtype=np.float64).max(axis=1)
        edges = np.unique(np.quantile(s, np.linspace(0, 1, 11)))
        if len(edges) < 3:
            return np.ones(len(s))
        b_pairs = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
        b_recent = np.clip(np.searchsorted(edges, recent, side="right") - 1, 0, len(edges) - 2)
        f_pairs = np.bincount(b_pairs, minlength=len(edges) - 1) / len(s)
        f_recent = np.bincount(b_recent, minlength=len(edges) - 1) / len(recent)
        return f_recent[b_pairs] / np.maximum(f_pairs[b_pairs], 1e-12)

    def _quality_step(self) -> tuple[float | None, str]:
        arr = PairArrays(list(self.pairs), len(self.fleet.models))
        self.estimate = realised_drop(arr, self.fleet.ref)
        n = len(arr.weight)
        if n < self.min_pairs:
            return None, ""
        curve = drop_curve(arr, self.fleet, self.grid, self.z, self._shift(arr.scores), self.horizon_requests)
        value = (curve[2] if self.confidence > 0.5 else curve[0])[::-1]  # by falling threshold: rising savings
        over = np.flatnonzero(value > self.target + 1e-9)  # NaN (no pair tells) is never over
        # the first threshold past the target ends the search: no cherry-picking further down
        ok = np.flatnonzero(~np.isnan(value[: over[0] if len(over) else len(value)]))
        best = float(self.grid[::-1][ok[-1]]) if len(ok) else self.hi
        bound = float(value[ok[-1]]) if len(ok) else None
        shown = "none meets it" if bound is None else f"bound {bound:.2f} %"
        return best, f"{n} shadow pairs, {self.confidence:.0%} upper bound: {shown}"

    def state(self) -> dict[str, Any]:
        est = self.estimate
        return {
            "kind": self.kind,
            "target": self.target,
            "threshold": self.threshold,
            "reason": self.reason,
            "requests": self.seen,
            "pairs": len(self.pairs),
            "pairs_from": self.pairs_from,
            "estimate": None if est is None else {"value": est[0], "low": est[1], "high": est[2]},
            "range": [self.lo, self.hi],
            "unit": "money" if self.money is not None else "relative cost" if self.kind == "budget" else "share",
        }


def parse_hold(spec: str) -> tuple[str, float]:
    """``max_quality_drop=1`` / ``budget=30`` / ``cost_advantage=40`` → (kind, target)."""
    kind, sep, value = spec.partition("=")
    kind = kind.strip().replace("-", "_")
    try:
        target = float(value)
    except ValueError:
        target = math.nan
    if not sep or kind not in HOLD_KINDS or not math.isfinite(target):
        raise UsageError(f"--hold {spec!r}: expected KIND=PERCENT with KIND one of {', '.join(HOLD_KINDS)}")
    return kind, target


__all__ = ["HOLD_KINDS", "Hold", "parse_hold"]
