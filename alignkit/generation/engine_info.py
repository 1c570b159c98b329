"""What a rollout server says about itself at ms-swift's ``/get_engine_type/``, and the trainer's reading of it.

ms-swift's examples give the multi-turn scheduler to the rollout server (``swift rollout --multi_turn_scheduler
NAME --max_turns N --external_plugins plugin.py``) and not to the trainer, which learns at start-up from the
server's ``/get_engine_type/`` that rollouts are multi-turn. alignkit's servers generate one turn per request and
the trainer drives the turns (alignkit/algorithms/multi_turn.py): so ``alignkit rollout`` takes the same flags,
checks the scheduler, and announces it at the same route; a trainer given no scheduler of its own adopts the one
its servers announce, loading the same plugin files. The trajectories are the same as the scheduler running in the
server: each turn is still sampled by the server, from the weights the trainer pushed.

The answer (ms-swift's fields, then alignkit's)::

    {"engine_type": "AsyncLLMEngine", "enable_multi_turn": true, "use_gym_env": false, "enable_lora": false,
     "multi_turn_scheduler": "tool_call_scheduler", "max_turns": 5, "external_plugins": ["/abs/plugin.py"]}

The transformers server (alignkit/commands/rollout_server.py) has the route; vLLM's OpenAI server (what TRL's
``vllm-serve`` runs) gets it from ``engine_info_middleware``, given to ``vllm serve --middleware``, which reads the
answer from the environment ``alignkit rollout`` started it with.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

ROUTE = "/get_engine_type/"
ENVIRONMENT = "ALIGNKIT_ROLLOUT_ENGINE_INFO"
MIDDLEWARE = f"{__name__}.engine_info_middleware"


def describe(args, engine_type: str) -> dict:
    """The /get_engine_type/ answer of a server started with ``args`` (RolloutArguments)."""
    multi_turn = bool(args.multi_turn_scheduler)
    gym = multi_turn and bool(args.use_gym_env if args.use_gym_env is not None else args.gym_env)
    return {"engine_type": engine_type, "enable_multi_turn": multi_turn, "use_gym_env": gym,
            "enable_lora": False, "multi_turn_scheduler": args.multi_turn_scheduler,
            "max_turns": args.max_turns if multi_turn else None, "gym_env": args.gym_env if multi_turn else None,
            "external_plugins": [str(Path(p).resolve()) for p in args.external_plugins] if multi_turn else []}


async def engine_info_middleware(request, call_next):
    """vLLM's ``--middleware`` hook (an ``app.middleware("http")`` function): answers /get_engine_type/ (GET or
    POST, as ms-swift's client posts) with the JSON in $ALIGNKIT_ROLLOUT_ENGINE_INFO; every other request passes."""
    if request.url.path.rstrip("/") == ROUTE.rstrip("/"):
        from fastapi.responses import JSONResponse

        return JSONResponse(json.loads(os.environ.get(ENVIRONMENT) or "{}"))
    return await call_next(request)


def fetch_engine_info(base_url: str) -> dict | None:
    """A running server's /get_engine_type/ answer; None when it has no such route (a plain vLLM server)."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}{ROUTE}", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as error:
        raise AlignkitError(f"the rollout server at {base_url} did not answer {ROUTE} ({error})") from None
    return body if isinstance(body, dict) else None


@dataclass(frozen=True)
class ServerScheduler:
    """A multi-turn scheduler the rollout servers run for the trainer."""

    name: str
    max_turns: int | None
    plugins: tuple[str, ...]
    use_gym_env: bool = False
    gym_env: str | None = None


def announced_scheduler(answers: dict[str, dict | None]) -> ServerScheduler | None:
    """The scheduler the servers announce (``answers``: base URL → its /get_engine_type/ answer), or None; servers
    that disagree stop the run (ms-swift assumes them alike and reads the first)."""
    announced = {url: ServerScheduler(a["multi_turn_scheduler"], a.get("max_turns"),
                                      tuple(a.get("external_plugins") or ()), bool(a.get("use_gym_env")),
                                      a.get("gym_env"))
                 for url, a in answers.items() if a and a.get("enable_multi_turn") and a.get("multi_turn_scheduler")}
    if not announced:
        return None
    if len(set(announced.values())) > 1 or len(announced) < len(answers):
        said = "; ".join(f"{url}: {announced.get(url, 'one turn per request')}" for url in answers)
        raise AlignkitError(f"the rollout servers announce different multi-turn settings ({said}); start them with "
                            "the same --multi_turn_scheduler, --max_turns and --external_plugins")
    return next(iter(announced.values()))


def with_server_scheduler(args):
    """``args`` (a trainer's, ``--vllm_mode server``) with the multi-turn scheduler its rollout servers announce,
    as ms-swift's trainer takes it from ``get_engine_type``: waits for each server (--vllm_server_timeout), asks
    it, and, where the servers run a scheduler, sets --multi_turn_scheduler / --max_turns / --gym_env (and
    --use_gym_env unless the trainer set it) and adds the server's plugin files to --external_plugins (loaded with
    the scheduler's checks). A trainer that names a different scheduler, or plugin files this machine does not
    have, stops."""
    import dataclasses

    from alignkit.config.multi_turn_checks import check_multi_turn_flags
    from alignkit.generation.rollout_client import server_backend
    from alignkit.generation.vllm_server import server_addresses

    answers = {}
    for url, host, port, _ in server_addresses(args):
        base_url = url or f"http://{host}:{port}"
        server_backend(base_url, args.vllm_server_timeout)  # waits until the server answers
        answers[base_url] = fetch_engine_info(base_url)
    scheduler = announced_scheduler(answers)
    if scheduler is None:
        return args
    servers = ", ".join(answers)
    if args.multi_turn_scheduler and args.multi_turn_scheduler != scheduler.name:
        raise AlignkitError(f"--multi_turn_scheduler {args.multi_turn_scheduler}: the rollout server ({servers}) "
                            f"runs --multi_turn_scheduler {scheduler.name}; give the same one to both, or to the "
                            "server alone")
    if None not in (args.max_turns, scheduler.max_turns) and args.max_turns != scheduler.max_turns:
        raise AlignkitError(f"--max_turns {args.max_turns}: the rollout server ({servers}) runs --max_turns "
                            f"{scheduler.max_turns}; give the same number to both, or to the server alone")
    own = {Path(p).resolve() for p in args.external_plugins}
    own_names = {p.name for p in own}
    extra = [p for p in scheduler.plugins if Path(p) not in own and Path(p).name not in own_names]
    missing = [p for p in extra if not Path(p).is_file()]
    if missing:
        raise AlignkitError(f"the rollout server ({servers}) runs --multi_turn_scheduler {scheduler.name} with "
                            f"--external_plugins {' '.join(missing)}, which this machine does not have; the trainer "
                            "drives the turns and needs the scheduler's file: pass a copy with --external_plugins")
    if args.gym_env and scheduler.gym_env and args.gym_env != scheduler.gym_env:
        raise AlignkitError(f"--gym_env {args.gym_env}: the rollout server ({servers}) runs --gym_env "
                            f"{scheduler.gym_env}; give the same one to both, or to the server alone")
    # As ms-swift's trainer: the server's use_gym_env unless the trainer set its own.
    adopted = dataclasses.replace(args, multi_turn_scheduler=scheduler.name,
                                  max_turns=args.max_turns if args.max_turns is not None else scheduler.max_turns,
                                  external_plugins=[*args.external_plugins, *extra],
                                  gym_env=args.gym_env or scheduler.gym_env,
                                  use_gym_env=args.use_gym_env if args.use_gym_env is not None else
                                  scheduler.use_gym_env)
    check_multi_turn_flags(adopted)
    logger.info("--multi_turn_scheduler %s, --max_turns %s%s: announced by the rollout server (%s), as ms-swift's "
                "server runs it; alignkit's trainer drives the turns (plugins: %s), each turn sampled by the server",
                adopted.multi_turn_scheduler, adopted.max_turns,
                f", --gym_env {adopted.gym_env}, --use_gym_env {adopted.use_gym_env}" if adopted.gym_env or
                adopted.use_gym_env else "", servers, ", ".join(scheduler.plugins) or "none")
    return adopted
