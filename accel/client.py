"""``python -m accel queue WORKFLOW.json``: post an API-format workflow to a ComfyUI server, follow it
over the websocket, print the cache decisions, and report errors the way the server gives them."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from .diagnostics.render import format_table
from .diagnostics.trace import StepRecord, Trace


class QueueError(RuntimeError):
    """The server refused or failed the prompt."""


def _node_errors(body: dict[str, Any]) -> str:
    lines = [body.get("error", {}).get("message", "the server refused the prompt")]
    for node_id, entry in body.get("node_errors", {}).items():
        for error in entry.get("errors", []):
            lines.append(f"  node {node_id} ({entry.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(lines)


async def queue(workflow: dict[str, Any], server: str, timeout_s: float = 3600.0, out=sys.stdout) -> Trace:
    import aiohttp

    client_id = uuid.uuid4().hex
    trace = Trace()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            async with session.post(f"{server}/prompt", json={"prompt": workflow, "client_id": client_id}) as response:
                body = await response.json()
                if response.status != 200 or body.get("node_errors"):
                    if response.status == 200:  # queued, but only its valid outputs would run
                        await session.post(f"{server}/queue", json={"delete": [body["prompt_id"]]})
                    raise QueueError(_node_errors(body))
            prompt_id = body["prompt_id"]
            print(f"queued prompt {prompt_id}", file=out, flush=True)
            await asyncio.wait_for(_follow(ws, prompt_id, trace, out), timeout_s)
    print("", file=out)
    return trace


async def _follow(ws, prompt_id: str, trace: Trace, out) -> None:
    import aiohttp

    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(message.data)
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "progress":
            print(f"\rstep {data['value']}/{data['max']}", end="", file=out, flush=True)
        elif kind == "cachedit.step":
            trace.steps = data["steps"]
            trace.add(StepRecord(**r) for r in data["records"])
        elif kind == "cachedit.done":
            trace.info.update(data.get("info") or {})
        elif kind == "execution_cached":
            trace.info.setdefault("cached_nodes", []).extend(data.get("nodes") or [])
        elif kind == "execution_error":
            raise QueueError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                             f"{data.get('exception_type')}: {data.get('exception_message')}")
        elif kind == "execution_interrupted":
            raise QueueError("the prompt was interrupted")
        elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
            return


def queue_command(path: Path, server: str) -> int:
    try:
        workflow = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    if "nodes" in workflow and "links" in workflow:
        print(f"error: {path} is a UI-format workflow; export it with 'Export (API)' or use the *_api.json file",
              file=sys.stderr)
        return 2
    try:
        trace = asyncio.run(queue(workflow, server.rstrip("/")))
    except QueueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot reach the ComfyUI server at {server}: {error}", file=sys.stderr)
        return 1
    if trace.records:
        print(format_table(trace))
    elif trace.info.get("cached_nodes"):
        print("done: ComfyUI reused its cached outputs, nothing ran (change a seed or an input to run again)")
    else:
        print("done (the workflow ran no cache-dit sampler)")
    return 0
