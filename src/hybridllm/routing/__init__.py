"""Routing policy, pure arithmetic on scores: the fleet (models in cost order and the reference),
the decision rule (the cheapest model whose score clears the threshold), the calibration sweep that
turns every achievable threshold into cost and quality on validation rows, and the resolution of a
knob (quality drop, cost advantage, budget, threshold) into a threshold.

Also what routing knows of a conversation (docs/sessions.md): :mod:`.conversation` reads a chat body's
messages (the router's text views, tool loops, the session key) and :mod:`.sessions` keeps a session's
model (only up, tool loops whole) in a :mod:`.session_store`; :mod:`.capabilities` says which models
can serve a request (capabilities, context windows).

Imports nothing of hybridllm's but :mod:`hybridllm.errors` (and :mod:`hybridllm.features.text`'s
flattening of chat turns, in :mod:`.conversation`; the models file's capability names,
:data:`hybridllm.tables.registry.CAPABILITIES`, in :mod:`.capabilities`): it knows scores, not models
or encoders.
"""
