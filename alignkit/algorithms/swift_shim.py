"""``swift.rewards`` for ms-swift reward plugin files when ms-swift is not installed.

An ms-swift plugin file (``--external_plugins plugin.py``) starts with ``from swift.rewards import ORM, orms``
(ms-swift 4.x) or ``from swift.plugin import ORM, orms`` (3.x), subclasses ``ORM`` and registers its classes:
``orms['my_reward'] = MyReward``. Without ms-swift, those two modules are provided here, holding alignkit's
``ORM``, ``AsyncORM`` and ``orms`` (alignkit.algorithms.reward_funcs), so such a file loads unchanged. With
ms-swift installed nothing is replaced: the file imports ms-swift's own, and what it registered in ms-swift's
``orms`` is read from there.

Multi-turn scheduler plugins likewise: ``from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns``
(ms-swift 4.x; ``swift.rollout`` too) or ``from swift.plugin import MultiTurnScheduler, multi_turns`` (3.x) get
alignkit's ``MultiTurnScheduler`` and ``multi_turns`` (alignkit.algorithms.multi_turn).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

from alignkit.algorithms import multi_turn, reward_funcs

SHIM_ATTRIBUTE = "__alignkit_shim__"


def swift_orms() -> dict[str, type]:
    """The ``orms`` entries plugin files may have registered: alignkit's table when the shim is in place (installed
    here on first call if ms-swift is absent), else what ms-swift's table holds beyond ms-swift's own classes."""
    if "swift" not in sys.modules and importlib.util.find_spec("swift") is None:
        _install()
    module = sys.modules.get("swift.rewards")
    if module is None:
        if getattr(sys.modules.get("swift"), SHIM_ATTRIBUTE, False):
            return reward_funcs.orms
        return {}  # real ms-swift, whose rewards no plugin has imported yet
    if getattr(module, SHIM_ATTRIBUTE, False):
        return reward_funcs.orms
    return {name: cls for name, cls in getattr(module, "orms", {}).items()
            if not getattr(cls, "__module__", "").startswith("swift.")}


def swift_multi_turns() -> dict[str, type]:
    """The schedulers ``--multi_turn_scheduler`` may name: alignkit's table (ms-swift's built-ins and what plugin
    files registered through the shim), else alignkit's built-ins and what plugins registered in ms-swift's."""
    if "swift" not in sys.modules and importlib.util.find_spec("swift") is None:
        _install()
    if is_shim_active():
        return multi_turn.multi_turns
    module = sys.modules.get("swift.rollout.multi_turn")
    registered = getattr(module, "multi_turns", {}) if module is not None else {}
    return {**multi_turn.multi_turns, **{name: cls for name, cls in registered.items()
                                         if not getattr(cls, "__module__", "").startswith("swift.")}}


def is_shim_active() -> bool:
    return bool(getattr(sys.modules.get("swift"), SHIM_ATTRIBUTE, False))


def _install() -> None:
    rewards = {"ORM": reward_funcs.ORM, "AsyncORM": reward_funcs.AsyncORM, "orms": reward_funcs.orms}
    schedulers = {"MultiTurnScheduler": multi_turn.MultiTurnScheduler,
                  "RolloutScheduler": multi_turn.RolloutScheduler, "GYMScheduler": multi_turn.GYMScheduler,
                  "OpenEnvScheduler": multi_turn.OpenEnvScheduler, "multi_turns": multi_turn.multi_turns}
    gym = {"Env": multi_turn.Env, "envs": multi_turn.envs}
    # The protocol types, logger and Messages alias that ms-swift's plugin files import beside the classes above.
    protocol = {"RolloutInferRequest": multi_turn.RolloutInferRequest, "ChatMessage": multi_turn.ChatMessage,
                "ChatCompletionResponseChoice": multi_turn.ChatCompletionResponseChoice}
    utils = {"get_logger": lambda *args, **kwargs: logging.getLogger("alignkit.plugin")}
    package = types.ModuleType("swift", "alignkit's stand-in for ms-swift's plugin API (rewards, schedulers)")
    package.__path__ = []  # a package, so `import swift.rewards` looks in sys.modules
    setattr(package, SHIM_ATTRIBUTE, True)
    sys.modules["swift"] = package
    # swift.rewards also exports the scheduler names (ms-swift's treepo plugin imports them from there), and
    # swift.rewards.orm is where ORM and orms are defined (deepeyes' plugin imports them from there).
    for name, exported in (("rewards", {**rewards, **schedulers}), ("rewards.orm", rewards),
                           ("plugin", {**rewards, **schedulers}), ("rollout", {**schedulers, **gym}),
                           ("rollout.multi_turn", schedulers), ("rollout.gym_env", gym), ("infer_engine", {}),
                           ("infer_engine.protocol", protocol), ("template", {"Messages": list[dict]}),
                           ("utils", utils)):
        module = types.ModuleType(f"swift.{name}")
        module.__dict__.update(exported)
        setattr(module, SHIM_ATTRIBUTE, True)
        if name in ("rollout", "rewards", "infer_engine"):
            module.__path__ = []
        parent, _, leaf = f"swift.{name}".rpartition(".")
        setattr(sys.modules[parent], leaf, module)
        sys.modules[f"swift.{name}"] = module
