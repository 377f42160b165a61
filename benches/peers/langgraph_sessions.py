"""The session loop of scripts/bench-sessions.sh, in LangGraph with its PostgreSQL
checkpointer: a graph agent -> tools -> agent (MessagesState, ToolNode, tools_condition)
compiled with AsyncPostgresSaver on a psycopg AsyncConnectionPool, one thread_id per
session. The chat model is a FAKE (a BaseChatModel subclass) that answers at once, like
Mister Smith's `scripted` provider, and never calls the network:

  - last message a human one containing "single" -> one tool call echo(text="y1")
  - last message a human one containing "turn"   -> two tool calls in ONE answer,
                                                    echo(text="x1"), echo(text="x2")
  - last message a tool result containing "y1"/"x2" -> the answer "done"

so a turn is: agent (LLM call), tools (ToolNode runs the two calls concurrently), agent
(the answer): two LLM calls and two tool calls, as a Mister Smith turn.

Chosen concurrency model: asyncio, one event loop, one coroutine per session
(graph.ainvoke), AsyncPostgresSaver over an AsyncConnectionPool (LangGraph's async path;
its sync PostgresSaver with a thread pool would be held back by the GIL and threads).

  latency [--n N] [--blocks B]
      one turn at a time, each in a new thread_id (a one-turn session), the model calling
      ONE echo then answering (comparable with bench-sessions.sh's latency part): p50/p99
      of the turn's wall time (ainvoke start to return).
  load [--sessions S] [--turns T]
      S sessions at once, each T turns in sequence (two echo calls per turn): turns/s, LLM
      and tool calls/s, p50/p99 per-turn latency, failures, and the Python process's
      peak RSS (VmHWM) and sampled VmRSS.

Options: --dsn (default postgres://postgres@127.0.0.1:5432/bench_lg; the database must
exist), --pool-size (default 32), --durability sync|async|exit (LangGraph's; default
sync: every checkpoint is committed before the next step runs, as Mister Smith commits a
turn before its 202 and each step's result before the next).
Each run starts from empty checkpoint tables (TRUNCATE) so runs do not grow each other.
"""
import argparse
import asyncio
import json
import resource
import sys
import threading
import time
import uuid
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool


class ScriptedChatModel(BaseChatModel):
    """Mirrors actors/src/llm/scripted.rs with this bench's script: matches the LAST
    message (a human's or a tool's result) and answers at once."""

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1]
        text = last.content if isinstance(last.content, str) else json.dumps(last.content)
        n = len(messages)
        if isinstance(last, ToolMessage) and ("y1" in text or "x2" in text):
            return AIMessage(content="done")
        if "single" in text:
            return AIMessage(content="", tool_calls=[
                {"name": "echo", "args": {"text": "y1"}, "id": f"call_{n}_0", "type": "tool_call"}])
        if "turn" in text:
            return AIMessage(content="", tool_calls=[
                {"name": "echo", "args": {"text": "x1"}, "id": f"call_{n}_0", "type": "tool_call"},
                {"name": "echo", "args": {"text": "x2"}, "id": f"call_{n}_1", "type": "tool_call"}])
        raise ValueError(f"no scripted reply for {text[:200]!r}")

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])


@tool
def echo(text: str) -> str:
    """Returns its text."""
    return text


MODEL = ScriptedChatModel()


async def agent(state: MessagesState):
    return {"messages": [await MODEL.ainvoke(state["messages"])]}


def build(checkpointer):
    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([echo]))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=checkpointer)


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(round(len(v) * p / 100.0 + 0.5)) - 1))]


def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_sampler(stop, out):
    while not stop.is_set():
        out["rss_max_kb"] = max(out.get("rss_max_kb", 0), vm("VmRSS"))
        stop.wait(0.25)


def count(messages):
    """LLM calls and tool calls of one turn's new messages."""
    llm = sum(1 for m in messages if isinstance(m, AIMessage))
    tools = sum(1 for m in messages if isinstance(m, ToolMessage))
    return llm, tools


async def one_turn(graph, thread_id, message, durability):
    config = {"configurable": {"thread_id": thread_id}}
    t0 = time.perf_counter()
    out = await graph.ainvoke({"messages": [HumanMessage(message)]}, config, durability=durability)
    wall = (time.perf_counter() - t0) * 1000
    msgs = out["messages"]
    # This turn's messages: from its human message on.
    start = max(i for i, m in enumerate(msgs) if isinstance(m, HumanMessage))
    new = msgs[start + 1:]
    if not new or new[-1].content != "done":
        raise RuntimeError(f"turn of {thread_id} ended with {new[-1] if new else None!r}")
    return wall, count(new)


async def latency(graph, args):
    walls = []
    for _ in range(20):  # warm-up
        await one_turn(graph, str(uuid.uuid4()), "single", args.durability)
    for _ in range(args.blocks):
        for _ in range(args.n):
            wall, (llm, tools) = await one_turn(graph, str(uuid.uuid4()), "single", args.durability)
            assert (llm, tools) == (2, 1), (llm, tools)
            walls.append(wall)
    out = {"n": len(walls), "p50_ms": pct(walls, 50), "p99_ms": pct(walls, 99),
           "mean_ms": sum(walls) / len(walls), "durability": args.durability}
    print(f"langgraph one-turn session (1 tool), one at a time, durability={args.durability}: "
          f"n {out['n']}, p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, "
          f"mean {out['mean_ms']:.2f} ms")
    print("RESULT " + json.dumps(out))


async def load(graph, args):
    stats = {"turns": 0, "llm": 0, "tools": 0, "walls": [], "failures": []}
    rss = {"rss_before_kb": vm("VmRSS")}
    stop = threading.Event()
    threading.Thread(target=rss_sampler, args=(stop, rss), daemon=True).start()
    gate = asyncio.Event()

    async def session(i):
        await gate.wait()
        tid = f"s{i}-{uuid.uuid4()}"
        for t in range(1, args.turns + 1):
            try:
                wall, (llm, tools) = await one_turn(graph, tid, f"turn {t} of client {i}",
                                                    args.durability)
            except Exception as e:  # noqa: BLE001 - counted and reported
                stats["failures"].append(f"session {i} turn {t}: {e!r}")
                return
            if (llm, tools) != (2, 2):
                stats["failures"].append(f"session {i} turn {t}: llm {llm} tools {tools}")
                return
            stats["turns"] += 1
            stats["llm"] += llm
            stats["tools"] += tools
            stats["walls"].append(wall)

    tasks = [asyncio.create_task(session(i)) for i in range(args.sessions)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    stop.set()
    w = stats["walls"]
    out = {"sessions": args.sessions, "turns_each": args.turns, "durability": args.durability,
           "pool_size": args.pool_size, "turns_done": stats["turns"],
           "expected": args.sessions * args.turns, "wall_s": wall,
           "turns_per_s": stats["turns"] / wall, "llm_per_s": stats["llm"] / wall,
           "tools_per_s": stats["tools"] / wall, "failures": len(stats["failures"]),
           "turn_p50_ms": pct(w, 50), "turn_p99_ms": pct(w, 99),
           "hwm_kb": vm("VmHWM"), "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           **rss}
    print(f"langgraph: {out['turns_done']}/{out['expected']} turns in {wall:.2f} s = "
          f"{out['turns_per_s']:.1f} turns/s, LLM calls {out['llm_per_s']:.1f}/s, tool calls "
          f"{out['tools_per_s']:.1f}/s; failures {out['failures']} (durability={args.durability}, "
          f"pool {args.pool_size})")
    print(f"  per turn: p50 {out['turn_p50_ms']:.0f} ms, p99 {out['turn_p99_ms']:.0f} ms; "
          f"python RSS before {rss['rss_before_kb'] / 1024:.0f} MiB, max sampled "
          f"{rss.get('rss_max_kb', 0) / 1024:.0f} MiB, VmHWM {out['hwm_kb'] / 1024:.0f} MiB")
    for f in stats["failures"][:10]:
        print("  FAILURE " + f)
    print("RESULT " + json.dumps(out))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=("latency", "load"))
    p.add_argument("--dsn", default="postgres://postgres@127.0.0.1:5432/bench_lg")
    p.add_argument("--pool-size", type=int, default=32)
    p.add_argument("--durability", choices=("sync", "async", "exit"), default="sync")
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--turns", type=int, default=3)
    args = p.parse_args()
    async with AsyncConnectionPool(
            args.dsn, min_size=min(4, args.pool_size), max_size=args.pool_size, open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}) as pool:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        async with pool.connection() as conn:
            await conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
        graph = build(saver)
        if args.cmd == "latency":
            await latency(graph, args)
        else:
            await load(graph, args)


if __name__ == "__main__":
    if sys.version_info < (3, 11):
        sys.exit("python 3.11+")
    asyncio.run(main())
