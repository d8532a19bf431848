"""Several local samples decoded together in one llama.cpp context.

On a CPU, one decoding step for one sequence reads every weight of the model to produce a single
token; feeding several sequences through the same step reads the weights once for all of them. The
``N`` samples that ``collect`` draws for one prompt are the textbook case: they share the prompt,
which is evaluated once (its KV cells belong to every sequence of the group), and then step together.
The sampler chain is the one llama-cpp-python's ``create_completion`` builds (top-k 40, typical 1,
top-p, min-p 0.05, temperature, seeded dist), so a batched sample is drawn from the same distribution
as a sequential one with the same settings and seed; it is not bit-identical, because batched matrix
products round differently."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from hybridllm.errors import UsageError

from ._types import BackendError, SamplingParams

TOP_K = 40
MIN_P = 0.05


@dataclass
class BatchRequest:
    prompt_tokens: list[int]
    params: SamplingParams


@dataclass
class BatchResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class _Seq:
    req: BatchRequest
    sampler: Any
    pos: int
    tokens: list[int] = field(default_factory=list)
    done: str | None = None
    text: bytearray = field(default_factory=bytearray)  # the pieces so far, for stop detection


def _sampler(params: SamplingParams) -> Any:
    import llama_cpp as lc

    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if params.temperature <= 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain
    for s in (
        lc.llama_sampler_init_top_k(TOP_K),
        lc.llama_sampler_init_typical(1.0, 1),
        lc.llama_sampler_init_top_p(params.top_p, 1),
        lc.llama_sampler_init_min_p(MIN_P, 1),
        lc.llama_sampler_init_temp(params.temperature),
        lc.llama_sampler_init_dist(params.seed if params.seed is not None else 0xFFFFFFFF),
    ):
        lc.llama_sampler_chain_add(chain, s)
    return chain


def abort_decodes(contexts: Sequence[Any], stop: threading.Event) -> Any:
    """Make every llama.cpp decode on ``contexts`` end at its next graph step while ``stop`` is set
    (llama_decode then fails: the caller's generation raises). Returns the C callback, which the
    caller must keep referenced while it is installed."""
    import llama_cpp as lc

    callback = lc.ggml_abort_callback(lambda _data: stop.is_set())
    for ctx in contexts:
        if ctx is not None:
            lc.llama_set_abort_callback(ctx, callback, None)
    return callback


class BatchedDecoder:
    """A second llama.cpp context on an already loaded ``llama_cpp.Llama`` model, with room for
    ``n_seq`` parallel sequences in a unified KV cache of ``n_ctx`` cells."""

    def __init__(self, llm: Any, n_seq: int = 8, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        import llama_cpp as lc

        self.llm = llm
        self.n_seq = n_seq
        self.n_ctx = n_ctx
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.kv_unified = True
        threads = n_threads or llm.context_params.n_threads
        params.n_threads = threads
        params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(llm._model.model, params)
        if self.ctx is None:
            raise BackendError("llama.cpp could not create a batched context")
        self.memory = lc.llama_get_memory(self.ctx)
        self.vocab = lc.llama_model_get_vocab(llm._model.model)
        self.batch = lc.llama_batch_init(512, 0, n_seq)

    def close(self) -> None:
        import llama_cpp as lc

        if self.ctx is not None:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, entries: Sequence[tuple[int, int, Sequence[int], bool]]) -> None:
        """entries: (token, pos, seq ids, wants logits)."""
        import llama_cpp as lc

        b = self.batch
        for i, (tok, pos, seqs, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = len(seqs)
            for j, s in enumerate(seqs):
                b.seq_id[i][j] = s
            b.logits[i] = 1 if logits else 0
        b.n_tokens = len(entries)
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed ({rc}): KV cache of {self.n_ctx} cells too small?")

    def _piece_text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def generate(self, requests: Sequence[BatchRequest]) -> list[BatchResult]:
        """Decode up to ``n_seq`` requests together; requests with the same prompt share its KV cells."""
        import llama_cpp as lc

        if len(requests) > self.n_seq:
            raise UsageError(f"{len(requests)} requests > n_seq {self.n_seq}")
        if not requests:
            return []
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.prompt_tokens), []).append(i)
        entries, last_of = _prompt_entries(groups)
        need = len(entries) + sum(r.params.max_tokens for r in requests)
        if need > self.n_ctx:
            raise UsageError(f"batch needs up to {need} KV cells, context has {self.n_ctx}")
        lc.llama_memory_clear(self.memory, True)
        seqs = [_Seq(r, _sampler(r.params), len(r.prompt_tokens)) for r in requests]
        try:
            for start in range(0, len(entries), 512):
                chunk = entries[start : start + 512]
                self._decode(chunk)
                # a group's first token comes from the logits of its prompt's last token, which the
                # next chunk would overwrite
                for j in range(len(chunk)):
                    for i in last_of.get(start + j, ()):
                        self._accept(seqs[i], lc.llama_sampler_sample(seqs[i].sampler, self.ctx, j))
            while True:
                live = [(i, s) for i, s in enumerate(seqs) if s.done is None]
                if not live:
                    break
                self._decode([(s.tokens[-1], s.pos + len(s.tokens) - 1, (i,), True) for i, s in live])
                for j, (_, s) in enumerate(live):
                    self._accept(s, lc.llama_sampler_sample(s.sampler, self.ctx, j))
        finally:
            for s in seqs:
                lc.llama_sampler_free(s.sampler)
        return [self._result(s) for s in seqs]

    def _accept(self, s: _Seq, tok: int) -> None:
        import llama_cpp as lc

        if lc.llama_vocab_is_eog(self.vocab, tok):
            s.done = "stop"
            return
        s.tokens.append(tok)
        if self._hits_stop(s, tok):
            s.done = "stop"
        elif len(s.tokens) >= s.req.params.max_tokens:
            s.done = "length"

    def _hits_stop(self, s: _Seq, tok: int) -> bool:
        """Whether a stop string ends in the new token's piece. Only the piece and the bytes before
        it that a stop string could start in are searched (bytes, so a stop split across byte-level
        tokens is still seen); rescanning the whole text every step is quadratic in its length."""
        stop = s.req.params.stop
        if not stop:
            return False
        piece = self.llm.detokenize([tok])
        s.text += piece
        marks = [x.encode("utf-8") for x in stop]
        tail = bytes(s.text[-(len(piece) + max(map(len, marks)) - 1) :])
        return any(m in tail for m in marks)

    def _result(self, s: _Seq) -> BatchResult:
        text = self._piece_text(s.tokens)
        for x in s.req.params.stop or ():
            if x in text:
                text = text[: text.index(x)]
        return BatchResult(text, len(s.req.prompt_tokens), len(s.tokens), s.done or "length")


def _prompt_entries(
    groups: dict[tuple[int, ...], list[int]],
) -> tuple[list[tuple[int, int, tuple[int, ...], bool]], dict[int, list[int]]]:
    """The decode entries (token, position, sequence ids, wants logits) that put every distinct
    prompt into the KV cache, and for each entry index whose logits start a group, that group.

    The prefix all prompts share (chat templates start with the same system turn: 24 of the ~170
    tokens of an MMLU-Pro question with Qwen's template) is evaluated once, its cells tagged with
    every sequence of the batch; each prompt's rest once, tagged with its group's sequences. At
    least one token of each prompt stays outside the shared part, so each group has logits of its
    own to sample its first token from."""
    prompts = list(groups)
    shared = 0
    if len(prompts) > 1:
        common = sum(1 for _ in takewhile(lambda col: len(set(col)) == 1, zip(*prompts, strict=False)))
        shared = min(common, min(map(len, prompts)) - 1)
    everyone = tuple(i for ids in groups.values() for i in ids)
    entries = [(t, pos, everyone, False) for pos, t in enumerate(prompts[0][:shared])]
    last_of: dict[int, list[int]] = {}
    for prompt, ids in groups.items():
        entries += [(t, shared + j, tuple(ids), False) for j, t in enumerate(prompt[shared:])]
        entries[-1] = (*entries[-1][:3], True)
        last_of[len(entries) - 1] = ids
    return entries, last_of


def chat_prompt_tokens(llm: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the chat prompt exactly as ``create_chat_completion`` builds it from the GGUF's
    own template (the one llama-cpp-python selects by default)."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        raise UsageError("model has no chat template")
    eos, bos = llm.token_eos(), llm.token_bos()
    fmt = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    prompt = fmt(messages=messages).prompt  # type: ignore[arg-type]  # llama.cpp types each role's dict apart
    return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
