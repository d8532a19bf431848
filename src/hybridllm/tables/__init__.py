"""Tables: the routing table's format (read, validate, write, split by hashed id), the models file
(``models.toml``: names, costs, endpoints) and the one parser of model SPECs with their keys.

The bottom layer: it imports nothing of hybridllm's but :mod:`hybridllm.errors`, so every other
layer can read and write tables.
"""
