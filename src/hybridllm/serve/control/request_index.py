"""The answered requests ``/v1/feedback`` can name: who served each one, whose key asked, and its
prompt (as JSON text, when the server logs prompts), bounded in bytes with the oldest forgotten first.

Three stores do the same things, each atomically across everything that shares it:

- :class:`MemoryIndex`: one process (the default);
- :class:`SqliteIndex`: the workers of one ``--workers N`` server, in their shared folder;
- :class:`RedisIndex`: every replica pointed at one ``--state redis://`` (no TTL needed: the same
  byte bound holds in Redis, oldest evicted by one script).

``claim(rid, what)`` is true the first time only (first wins): ``"feedback"`` makes one feedback
record per request, ``"prompt"`` writes a request's prompt to the outcomes log once. ``hit`` counts
a key's feedback posts in one minute, for the per-key rate limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
import threading
import tracemalloc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from hybridllm.errors import require

log = logging.getLogger("hybridllm.serve")

#: what one index entry costs beyond its strings (the dict slot, the tuple, the flags), counted in
#: the byte bound so that many tiny entries are bounded too
ENTRY_OVERHEAD = 160


@dataclass(frozen=True, slots=True)
class Entry:
    """One answered request: the model that served it, its client key's name (None without keys)
    and its prompt as JSON text (None unless the server logs prompts)."""

    model: str
    key: str | None
    prompt: str | None = None

    def size(self, rid: str) -> int:
        """Its bytes in memory: each string's own size (a wide-character prompt counts its width)."""
        strings = (rid, self.model, self.key or "", self.prompt or "")
        return ENTRY_OVERHEAD + sum(sys.getsizeof(s) for s in strings)

    def encode(self) -> str:
        # the prompt is JSON text already (no raw newline in it): after the head line, as it is
        head = json.dumps([self.model, self.key])
        return head if self.prompt is None else head + "\n" + self.prompt

    @classmethod
    def decode(cls, text: str) -> Entry:
        head, sep, prompt = text.partition("\n")
        model, key = json.loads(head)
        return cls(model, key, prompt if sep else None)


class RequestIndex(Protocol):
    async def remember(self, rid: str, entry: Entry) -> None: ...
    async def get(self, rid: str) -> Entry | None: ...
    async def claim(self, rid: str, what: str) -> bool: ...
    async def hit(self, key: str, minute: int) -> int: ...
    async def close(self) -> None: ...


_CLAIMS = {"feedback": 1, "prompt": 2}


class MemoryIndex:
    """The index in this process: an ordered dict whose entries' sizes add up to at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()  # rid -> [entry, claims made (bits)]
        self._hits: dict[str, tuple[int, int]] = {}  # key -> (minute, posts in it)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, rid: str, entry: Entry) -> None:
        size = entry.size(rid)
        if size > self.max_bytes and entry.prompt is not None:  # too big to keep whole: keep who, not what
            entry = Entry(entry.model, entry.key)
            size = entry.size(rid)
        old = self._entries.pop(rid, None)
        if old is not None:
            self.bytes -= old[0].size(rid)
        self._entries[rid] = [entry, 0]
        self.bytes += size
        while self.bytes > self.max_bytes and self._entries:
            gone, (e, _) = self._entries.popitem(last=False)
            self.bytes -= e.size(gone)

    async def remember(self, rid: str, entry: Entry) -> None:
        self.add(rid, entry)

    async def get(self, rid: str) -> Entry | None:
        got = self._entries.get(rid)
        return None if got is None else got[0]

    async def claim(self, rid: str, what: str) -> bool:
        got, bit = self._entries.get(rid), _CLAIMS[what]
        if got is None or got[1] & bit:
            return False
        got[1] |= bit
        return True

    async def hit(self, key: str, minute: int) -> int:
        at, n = self._hits.get(key, (minute, 0))
        n = n + 1 if at == minute else 1
        self._hits[key] = (minute, n)
        return n

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS req (seq INTEGER PRIMARY KEY AUTOINCREMENT, rid TEXT UNIQUE NOT NULL,
  entry TEXT NOT NULL, size INTEGER NOT NULL, feedback INTEGER NOT NULL DEFAULT 0,
  prompt INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, minute INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (key, minute));
"""


class SqliteIndex:
    """The index in an SQLite file the workers of one server share (each call one transaction, run
    in a thread off the event loop)."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # a cache of recent requests: no fsync per commit
        self._db.executescript(_SCHEMA)

    def _tx(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def _remember(self, rid: str, entry: Entry) -> None:
        if entry.size(rid) > self.max_bytes:
            entry = Entry(entry.model, entry.key)
        size = entry.size(rid)
        cur = self._db.execute(
            "INSERT OR IGNORE INTO req (rid, entry, size) VALUES (?, ?, ?)", (rid, entry.encode(), size)
        )
        if not cur.rowcount:
            return
        total = self._db.execute("UPDATE total SET bytes = bytes + ? WHERE id = 0 RETURNING bytes", (size,)).fetchone()[
            0
        ]
        while total > self.max_bytes:
            old = self._db.execute("SELECT seq, size FROM req ORDER BY seq LIMIT 256").fetchall()
            if not old:
                break
            freed, cut = 0, old[0][0]
            for seq, sz in old:
                freed, cut = freed + sz, seq
                if total - freed <= self.max_bytes:
                    break
            self._db.execute("DELETE FROM req WHERE seq <= ?", (cut,))
            total = self._db.execute(
                "UPDATE total SET bytes = bytes - ? WHERE id = 0 RETURNING bytes", (freed,)
            ).fetchone()[0]

    def _get(self, rid: str) -> Entry | None:
        row = self._db.execute("SELECT entry FROM req WHERE rid = ?", (rid,)).fetchone()
        return None if row is None else Entry.decode(row[0])

    def _claim(self, rid: str, what: str) -> bool:
        column = {"feedback": "feedback", "prompt": "prompt"}[what]  # a claim's name is never the client's
        cur = self._db.execute(f"UPDATE req SET {column} = 1 WHERE rid = ? AND {column} = 0", (rid,))
        return bool(cur.rowcount)

    def _hit(self, key: str, minute: int) -> int:
        self._db.execute("DELETE FROM hits WHERE minute < ?", (minute - 1,))
        row = self._db.execute(
            "INSERT INTO hits VALUES (?, ?, 1) ON CONFLICT (key, minute) DO UPDATE SET n = n + 1 RETURNING n",
            (key, minute),
        ).fetchone()
        return int(row[0])

    async def remember(self, rid: str, entry: Entry) -> None:
        await asyncio.to_thread(self._tx, self._remember, rid, entry)

    async def get(self, rid: str) -> Entry | None:
        out: Entry | None = await asyncio.to_thread(self._tx, self._get, rid)
        return out

    async def claim(self, rid: str, what: str) -> bool:
        return bool(await asyncio.to_thread(self._tx, self._claim, rid, what))

    async def hit(self, key: str, minute: int) -> int:
        return int(await asyncio.to_thread(self._tx, self._hit, key, minute))

    async def close(self) -> None:
        with self._lock:
            self._db.close()


# ARGV: prefix, rid, encoded entry, byte bound. The entry, its place in the order, the running total;
# then the oldest entries (and their claims) go until the total is under the bound.
_REMEMBER = """
local p = ARGV[1]
if redis.call('SET', p .. 'req:' .. ARGV[2], ARGV[3], 'NX') == false then return 0 end
redis.call('RPUSH', p .. 'reqorder', ARGV[2])
local total = redis.call('INCRBY', p .. 'reqbytes', #ARGV[3] + #ARGV[2] + 100)
while total > tonumber(ARGV[4]) do
  local old = redis.call('LPOP', p .. 'reqorder')
  if not old then break end
  local v = redis.call('GET', p .. 'req:' .. old)
  if v then total = redis.call('DECRBY', p .. 'reqbytes', #v + #old + 100) end
  redis.call('DEL', p .. 'req:' .. old, p .. 'claim:feedback:' .. old, p .. 'claim:prompt:' .. old)
end
return 1
"""
# ARGV: prefix, rid, what: set the claim when the request is known and the claim is not yet set
_CLAIM = """
if redis.call('EXISTS', ARGV[1] .. 'req:' .. ARGV[2]) == 0 then return 0 end
if redis.call('SET', ARGV[1] .. 'claim:' .. ARGV[3] .. ':' .. ARGV[2], '1', 'NX') == false then return 0 end
return 1
"""


class RedisIndex:
    """The index in Redis, shared by every replica pointed at it; while Redis is down, this
    process's own :class:`MemoryIndex` stands in (and says so once in the log)."""

    def __init__(self, url: str, max_bytes: int, prefix: str = "hybridllm:") -> None:
        redis = require("redis.asyncio", "redis", "--state redis://")
        self.prefix, self.max_bytes = prefix, max_bytes
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._remember = self.client.register_script(_REMEMBER)
        self._claim = self.client.register_script(_CLAIM)
        self.local = MemoryIndex(max_bytes)
        self._said = False

    def _down(self, exc: BaseException) -> None:
        if not self._said:
            self._said = True
            log.warning(
                "feedback: Redis unreachable (%s); this process's own request index stands in", type(exc).__name__
            )

    async def remember(self, rid: str, entry: Entry) -> None:
        if entry.size(rid) > self.max_bytes:
            entry = Entry(entry.model, entry.key)
        try:
            await self._remember(args=[self.prefix, rid, entry.encode(), self.max_bytes])
        except Exception as exc:
            self._down(exc)
            self.local.add(rid, entry)

    async def get(self, rid: str) -> Entry | None:
        try:
            got = await self.client.get(f"{self.prefix}req:{rid}")
        except Exception as exc:
            self._down(exc)
            return await self.local.get(rid)
        if got is None:
            return await self.local.get(rid)
        return Entry.decode(got.decode() if isinstance(got, bytes) else str(got))

    async def claim(self, rid: str, what: str) -> bool:
        try:
            if await self._claim(args=[self.prefix, rid, what]):
                return True
        except Exception as exc:
            self._down(exc)
        return await self.local.claim(rid, what)

    async def hit(self, key: str, minute: int) -> int:
        name = f"{self.prefix}fbhits:{key}:{minute}"
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, 120)
            return int((await pipe.execute())[0])
        except Exception as exc:
            self._down(exc)
            return await self.local.hit(key, minute)

    async def close(self) -> None:
        await self.client.aclose()


def make_index(max_bytes: int, state: str | None = None, state_dir: str | None = None) -> RequestIndex:
    """Redis with ``--state``, else the workers' shared folder with ``--workers N``, else memory."""
    if state:
        return RedisIndex(state, max_bytes)
    if state_dir:
        return SqliteIndex(os.path.join(state_dir, "requests.sqlite"), max_bytes)
    return MemoryIndex(max_bytes)


def index_memory(n: int, prompt: Any, max_bytes: int = 64 << 20) -> dict[str, int]:
    """What the in-process index holds after ``n`` answered requests with ``prompt`` each (the
    benchmark's "memory of the request index after N requests"): the Python heap it takes
    (tracemalloc), the bytes it counts against its bound, and its entries."""
    text = json.dumps(prompt, ensure_ascii=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = MemoryIndex(max_bytes)
        for i in range(n):
            # each request brings its own prompt text (as the proxy's does), not one shared string
            index.add(f"req-{i:012x}", Entry("model-a", "team-a", (text + " ")[:-1]))
        heap = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"requests": n, "heap_bytes": heap, "counted_bytes": index.bytes, "entries": len(index)}
