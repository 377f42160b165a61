"""Sessions against plain tasks on one node (run by scripts/bench-sessions.sh, which starts
the node with the scripted LLM provider and the script below).

  latency BASE [N] [BLOCKS]
      One at a time on an idle node, alternating blocks of N: a one-turn session whose
      model calls ONE echo then answers (steps llm_1, t1_0, llm_2: one loop iteration and
      the answering call), and the raw baseline, a plain task of three chained echo steps.
      Per turn/task: the node's `finished_at - created_at` (ms precision) and the client's
      wall time from sending the POST to reading the final status (polled every 2 ms, so
      it carries up to ~2 ms of polling granularity and the GETs' cost).

  load BASE MODE [--sessions S] [--turns T] [--pool C] [--pid PID]
      S sessions at once (MODE `sessions`), each taking T turns in sequence: a turn's model
      asks for TWO echo calls in one answer (x1, x2), then answers "done" after their
      results (steps llm_1, t1_0, t1_1, llm_2: two LLM calls, two tool calls). MODE
      `tasks` is the raw baseline: the same S clients, each submitting T plain tasks in
      sequence, each of four echo steps shaped the same way (a; b and c after a; d after
      b and c). The client waits for each turn/task to end (polls GET /api/v1/tasks/{id},
      from 5 ms, backing off x1.5 to 100 ms) before sending the next. One asyncio process,
      raw HTTP/1.1 on a pool of C keep-alive connections (stdlib only). With --pid it
      samples that process's VmRSS every 0.25 s and reads its VmHWM at the end.

The node's script (two rules per shape; the first matching the LAST message wins):
  {"match": "y1", "reply": "done"}, {"match": "x2", "reply": "done"},
  {"match": "single", "tool_calls": [echo y1]}, {"match": "turn", "tool_calls": [echo x1, echo x2]}
"""
import argparse
import asyncio
import datetime
import json
import sys
import threading
import time
import urllib.request

FINAL = ("succeeded", "failed", "cancelled", "timed_out")

ECHO3 = {"steps": [
    {"id": "a", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["a"]},
    {"id": "c", "tool": "echo", "args": {"text": "x"}, "depends_on": ["b"]},
]}
DIAMOND4 = {"steps": [
    {"id": "a", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "tool": "echo", "args": {"text": "x1"}, "depends_on": ["a"]},
    {"id": "c", "tool": "echo", "args": {"text": "x2"}, "depends_on": ["a"]},
    {"id": "d", "tool": "echo", "args": {"text": "done"}, "depends_on": ["b", "c"]},
]}


def ms(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(round(len(v) * p / 100.0 + 0.5)) - 1))]


def step_ids(task):
    steps = task.get("steps") or []
    if isinstance(steps, dict):
        return list(steps)
    return [s.get("id", "") for s in steps]


# ---------------------------------------------------------------- latency (sequential)

def latency(base, n, blocks):
    def post(path, body):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        return json.load(urllib.request.urlopen(req))

    def get(path):
        return json.load(urllib.request.urlopen(base + path))

    def one(kind):
        t0 = time.perf_counter()
        if kind == "turn":
            task_id = post("/api/v1/sessions",
                           {"message": "single", "tools": ["echo"]})["turn"]["task_id"]
        else:
            task_id = post("/api/v1/tasks", ECHO3)["task_id"]
        while True:
            task = get(f"/api/v1/tasks/{task_id}")
            if task["status"] in FINAL:
                break
            time.sleep(0.002)
        wall = (time.perf_counter() - t0) * 1000
        if task["status"] != "succeeded":
            sys.exit(f"{kind} {task_id} ended {task['status']}: {task.get('error')}")
        if kind == "turn":
            ids = step_ids(task)
            if sorted(ids) != ["llm_1", "llm_2", "t1_0"]:
                sys.exit(f"turn {task_id}: unexpected steps {ids}")
        return ms(task["finished_at"]) - ms(task["created_at"]), wall

    res = {"echo3": ([], []), "turn": ([], [])}
    # Warm-up, not counted.
    for _ in range(20):
        one("echo3")
        one("turn")
    for _ in range(blocks):
        for kind in ("echo3", "turn"):
            for _ in range(n):
                server, wall = one(kind)
                res[kind][0].append(server)
                res[kind][1].append(wall)
    out = {}
    for kind, (server, wall) in res.items():
        out[kind] = {"n": len(server), "server_p50": pct(server, 50), "server_p99": pct(server, 99),
                     "server_mean": sum(server) / len(server),
                     "wall_p50": pct(wall, 50), "wall_p99": pct(wall, 99),
                     "wall_mean": sum(wall) / len(wall)}
        o = out[kind]
        print(f"{kind:6} n {o['n']}: server p50 {o['server_p50']:.1f} ms p99 {o['server_p99']:.1f} ms "
              f"mean {o['server_mean']:.2f} ms | client wall p50 {o['wall_p50']:.2f} ms "
              f"p99 {o['wall_p99']:.2f} ms mean {o['wall_mean']:.2f} ms")
    t, e = out["turn"], out["echo3"]
    print(f"loop iteration over the raw baseline (turn - echo3): server p50 "
          f"{t['server_p50'] - e['server_p50']:+.1f} ms, mean {t['server_mean'] - e['server_mean']:+.2f} ms; "
          f"client wall p50 {t['wall_p50'] - e['wall_p50']:+.2f} ms, "
          f"mean {t['wall_mean'] - e['wall_mean']:+.2f} ms")
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------- load (concurrent)

class Pool:
    """HTTP/1.1 keep-alive connections to one host, shared by every coroutine."""

    def __init__(self, host, port, size):
        self.host, self.port, self.size = host, port, size
        self.free = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)
        self.reconnects = 0

    async def request(self, method, path, body=None):
        conn = await self.free.get()
        try:
            for attempt in range(3):
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                    status, data = await self._once(conn, method, path, body)
                    self.free.put_nowait(conn)
                    conn = "returned"
                    return status, data
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    if conn not in (None, "returned"):
                        conn[1].close()
                    conn = None
                    self.reconnects += 1
                    if attempt == 2:
                        raise
        finally:
            if conn != "returned":
                if conn is not None:
                    conn[1].close()
                self.free.put_nowait(None)

    async def _once(self, conn, method, path, body):
        reader, writer = conn
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        writer.write(head.encode() + payload)
        await writer.drain()
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(chunks)
        else:
            data = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            raise ConnectionError("server closed")  # retried on a new connection
        return status, json.loads(data) if data else None


class Stats:
    def __init__(self):
        self.turns = 0
        self.failures = []
        self.llm = 0
        self.tools = 0
        self.server = []
        self.wall = []
        self.post = []
        self.polls = 0
        self.s429 = 0
        self.s409 = 0
        self.other_http = []


async def submit(pool, stats, mode, session_id, i, t):
    """POSTs turn/task t; returns (session_id, task_id)."""
    while True:
        if mode == "tasks":
            status, body = await pool.request("POST", "/api/v1/tasks", DIAMOND4)
        elif t == 1:
            status, body = await pool.request(
                "POST", "/api/v1/sessions", {"message": f"turn 1 of client {i}", "tools": ["echo"]})
        else:
            status, body = await pool.request(
                "POST", f"/api/v1/sessions/{session_id}/turns", {"message": f"turn {t} of client {i}"})
        if status == 202 or status == 201 or status == 200:
            if mode == "tasks":
                return None, body["task_id"]
            if t == 1:
                return body["session_id"], body["turn"]["task_id"]
            return session_id, body["task_id"]
        if status == 429:
            stats.s429 += 1
            await asyncio.sleep(0.1)
            continue
        if status == 409:
            stats.s409 += 1
            await asyncio.sleep(0.05)
            continue
        stats.other_http.append((status, body))
        raise RuntimeError(f"POST turn {t} of client {i}: HTTP {status} {body}")


async def client(pool, stats, mode, i, turns, start_gate):
    await start_gate.wait()
    session_id = None
    for t in range(1, turns + 1):
        t0 = time.perf_counter()
        try:
            session_id, task_id = await submit(pool, stats, mode, session_id, i, t)
            stats.post.append((time.perf_counter() - t0) * 1000)
            delay = 0.005
            while True:
                await asyncio.sleep(delay)
                delay = min(0.1, delay * 1.5)
                stats.polls += 1
                status, task = await pool.request("GET", f"/api/v1/tasks/{task_id}")
                if status != 200:
                    stats.other_http.append((status, task))
                    continue
                if task["status"] in FINAL:
                    break
        except Exception as e:  # noqa: BLE001 - counted and reported
            stats.failures.append(f"client {i} turn {t}: {e!r}")
            return
        wall = (time.perf_counter() - t0) * 1000
        if task["status"] != "succeeded":
            stats.failures.append(f"client {i} turn {t} task {task_id}: {task['status']} {task.get('error')}")
            return
        ids = step_ids(task)
        if mode == "sessions":
            llm = sum(1 for s in ids if s.startswith("llm_"))
            tools = len(ids) - llm
            if (llm, tools) != (2, 2):
                stats.failures.append(f"client {i} turn {t} task {task_id}: steps {ids}")
                return
            stats.llm += llm
            stats.tools += tools
        else:
            stats.tools += len(ids)
        stats.turns += 1
        stats.wall.append(wall)
        if task.get("finished_at") and task.get("created_at"):
            stats.server.append(ms(task["finished_at"]) - ms(task["created_at"]))


def rss_sampler(pid, stop, out):
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss_max_kb"] = max(out.get("rss_max_kb", 0), int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.25)


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


async def load(args):
    url = args.base.split("://", 1)[1].rstrip("/")
    host, port = url.split(":")
    pool = Pool(host, int(port), args.pool)
    stats = Stats()
    rss = {}
    stop = threading.Event()
    if args.pid:
        rss["rss_before_kb"] = vm(args.pid, "VmRSS")
        threading.Thread(target=rss_sampler, args=(args.pid, stop, rss), daemon=True).start()
    gate = asyncio.Event()
    clients = [asyncio.create_task(client(pool, stats, args.mode, i, args.turns, gate))
               for i in range(args.sessions)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*clients)
    wall = time.perf_counter() - t0
    stop.set()
    if args.pid:
        rss["hwm_kb"] = vm(args.pid, "VmHWM")
    out = {
        "mode": args.mode, "sessions": args.sessions, "turns_each": args.turns, "pool": args.pool,
        "turns_done": stats.turns, "expected": args.sessions * args.turns,
        "wall_s": wall, "turns_per_s": stats.turns / wall,
        "llm_calls": stats.llm, "llm_per_s": stats.llm / wall,
        "tool_calls": stats.tools, "tools_per_s": stats.tools / wall,
        "failures": len(stats.failures), "http_429": stats.s429, "http_409": stats.s409,
        "other_http": len(stats.other_http), "polls": stats.polls, "reconnects": pool.reconnects,
        "turn_wall_p50_ms": pct(stats.wall, 50), "turn_wall_p99_ms": pct(stats.wall, 99),
        "turn_server_p50_ms": pct(stats.server, 50), "turn_server_p99_ms": pct(stats.server, 99),
        "post_p50_ms": pct(stats.post, 50), "post_p99_ms": pct(stats.post, 99),
        **rss,
    }
    what = "turns" if args.mode == "sessions" else "tasks"
    print(f"{args.mode}: {stats.turns}/{args.sessions * args.turns} {what} in {wall:.2f} s = "
          f"{out['turns_per_s']:.1f} {what}/s, LLM calls {out['llm_per_s']:.1f}/s, "
          f"tool calls {out['tools_per_s']:.1f}/s; failures {len(stats.failures)}, "
          f"429s {stats.s429}, 409s {stats.s409}, other HTTP {len(stats.other_http)}, "
          f"reconnects {pool.reconnects}, polls {stats.polls}")
    print(f"  per {what[:-1]}: client wall p50 {out['turn_wall_p50_ms']:.0f} ms p99 "
          f"{out['turn_wall_p99_ms']:.0f} ms; node finished-created p50 "
          f"{out['turn_server_p50_ms']:.0f} ms p99 {out['turn_server_p99_ms']:.0f} ms; "
          f"the POST's own response time p50 {out['post_p50_ms']:.0f} ms p99 {out['post_p99_ms']:.0f} ms")
    if args.pid:
        print(f"  node RSS: before {rss.get('rss_before_kb', 0) / 1024:.0f} MiB, max sampled VmRSS "
              f"{rss.get('rss_max_kb', 0) / 1024:.0f} MiB, VmHWM at end {rss['hwm_kb'] / 1024:.0f} MiB")
    for f in stats.failures[:10]:
        print("  FAILURE " + f)
    for s, b in stats.other_http[:5]:
        print(f"  HTTP {s}: {json.dumps(b)[:300]}")
    print("RESULT " + json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("base")
    lat.add_argument("n", nargs="?", type=int, default=150)
    lat.add_argument("blocks", nargs="?", type=int, default=2)
    ld = sub.add_parser("load")
    ld.add_argument("base")
    ld.add_argument("mode", choices=("sessions", "tasks"))
    ld.add_argument("--sessions", type=int, default=1000)
    ld.add_argument("--turns", type=int, default=3)
    ld.add_argument("--pool", type=int, default=200)
    ld.add_argument("--pid", type=int)
    args = p.parse_args()
    if args.cmd == "latency":
        latency(args.base.rstrip("/"), args.n, args.blocks)
    else:
        asyncio.run(load(args))


if __name__ == "__main__":
    main()
