"""Latency of one task at a time on an idle node: `echo3` (three chained echo steps) and
an agent task (two scripted LLM calls and one echo), in alternating blocks, each task's
`finished_at - created_at` as the node stamps them (millisecond precision).

Usage: python3 scripts/agent-latency.py BASE_URL [tasks per block] [blocks per kind]
(run by scripts/bench-agent.sh against a node whose scripted LLM it configured).
"""
import datetime
import json
import sys
import time
import urllib.request

BASE = sys.argv[1].rstrip("/") + "/api/v1/tasks"
PER_BLOCK = int(sys.argv[2]) if len(sys.argv) > 2 else 150
BLOCKS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
FINAL = ("succeeded", "failed", "cancelled", "timed_out")

ECHO3 = {"steps": [
    {"id": "a", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["a"]},
    {"id": "c", "tool": "echo", "args": {"text": "x"}, "depends_on": ["b"]},
]}
AGENT = {"agent": {"message": "load", "tools": ["echo"]}}


def post(body):
    request = urllib.request.Request(
        BASE, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(request))


def get(task_id):
    return json.load(urllib.request.urlopen(f"{BASE}/{task_id}"))


def ms(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def one(body):
    task_id = post(body)["task_id"]
    while True:
        task = get(task_id)
        if task["status"] in FINAL:
            break
        time.sleep(0.002)
    if task["status"] != "succeeded":
        sys.exit(f"task {task_id} ended {task['status']}: {task.get('error')}")
    return ms(task["finished_at"]) - ms(task["created_at"])


walls = {"echo3": [], "agent": []}
for _ in range(BLOCKS):
    for kind, body in (("echo3", ECHO3), ("agent", AGENT)):
        walls[kind].extend(one(body) for _ in range(PER_BLOCK))
for kind, w in walls.items():
    w.sort()
    print(f"{kind}: n {len(w)}, p50 {w[len(w) // 2]:.1f} ms, "
          f"p99 {w[max(0, int(len(w) * 0.99) - 1)]:.1f} ms, every task succeeded")
