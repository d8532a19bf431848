"""The per-key steering signal: raised when a key's share of the dearer models over its last requests
jumps well above its own history (what a client steering its prompts toward the expensive model
looks like), for every server whose clients have keys, with or without budget caps
(docs/control.md). :class:`SteeringWatch` is its hook on the request path (before the call: it
sees each routed decision once, and refuses nothing)."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..hooks import BaseHook, RequestContext

log = logging.getLogger("hybridllm.access")


@dataclass
class _Steering:
    long: float = 0.0  # running share of dear models over the key's history (slow average)
    n: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=50))
    flagged: bool = False


class SteeringWatch(BaseHook):
    """The per-key steering signal, for every server whose clients have keys (caps or not): raised
    once when a key's share of the dearer models (``dear``: indices of the fleet) over its last 50
    routed requests jumps well above its own history, by 30 points and to more than twice it.
    ``flagged(key)``: told each time the flag is raised (the ``hybridllm_steering_suspected`` count)."""

    def __init__(self, dear: set[int], flagged: Callable[[str], None] | None = None) -> None:
        self.dear = dear
        self.flagged = flagged
        self.steering: dict[str, _Steering] = {}

    async def before_call(self, ctx: RequestContext) -> None:
        """Each routed decision, as the decider made it."""
        decision = ctx.decided
        if decision is None or decision.row is None:
            return
        if self.observe(ctx.key, decision.target) and self.flagged is not None:
            self.flagged(ctx.key or "-")

    def observe(self, key: str | None, target: int) -> bool:
        """Feed one routed decision of ``key``; True when this one raised the steering flag."""
        if key is None:
            return False
        st = self.steering.setdefault(key, _Steering())
        dear = 1 if target in self.dear else 0
        st.recent.append(dear)
        st.n += 1
        st.long += (dear - st.long) / min(st.n, 1000)
        if st.n < 200 or len(st.recent) < st.recent.maxlen:  # type: ignore[operator]
            return False
        short = sum(st.recent) / len(st.recent)
        jumped = short - st.long > 0.3 and short > 2 * st.long
        if jumped and not st.flagged:
            st.flagged = True
            log.info(json.dumps({"event": "steering_suspected", "key": key, "dear_share_recent": round(short, 3),
                                 "dear_share_history": round(st.long, 3)}))  # fmt: skip
            return True
        if not jumped:
            st.flagged = False
        return False
