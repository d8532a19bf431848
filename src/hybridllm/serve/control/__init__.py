"""Live control: what plugs into the request path as hooks (:mod:`hybridllm.serve.hooks`), one
module per piece: ``budget`` (per-key and overall spend caps), ``steering`` (the per-key steering
signal), ``shadow`` (shadow checks, bounded by ``shadow_bounds``), ``outcomes`` (the outcomes log,
``POST /v1/feedback`` and the ``request_index`` it names requests by), ``estimates`` (live quality
and spend estimates from the shadow pairs) and ``hold`` (the decider that holds a target on plain
``hybrid``, and the sharing of its pairs across replicas). ``assemble`` builds what the settings ask
for; :func:`hybridllm.serve.app.create_app` (the composition root) hands it to the proxy.

The request path's core never imports this package (an import-linter contract in pyproject.toml).
"""
