"""Routing policy, pure arithmetic on scores: the fleet (models in cost order and the reference),
the decision rule (the cheapest model whose score clears the threshold), the calibration sweep that
turns every achievable threshold into cost and quality on validation rows, and the resolution of a
knob (quality drop, cost advantage, budget, threshold) into a threshold.

Imports nothing of hybridllm's but :mod:`hybridllm.errors`: it knows scores, not models or encoders.
"""
