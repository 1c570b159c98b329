"""``--report_to``: the experiment trackers a run's metrics go to besides the console and ``logging.jsonl``,
built from accelerate's own tracker classes (``accelerate.tracking``: TensorBoardTracker, WandBTracker,
SwanLabTracker) and driven by the main process.

====================  ==================================================================================
tensorboard           ``<run dir>/runs``; a resumed run hides the stopped run's events after its checkpoint
wandb                 project ``$WANDB_PROJECT`` (default alignkit), run ``--run_name``, files under
                      ``<run dir>/wandb``; ``WANDB_MODE=offline`` writes an offline run there
swanlab               ``--swanlab_project/_workspace/_exp_name/_mode/_token`` and ms-swift's notification
                      flags (``--swanlab_notification_method`` ...), files under ``<run dir>/swanlog``
all                   every one of the above whose package is installed (as transformers' ``all``)
none                  none of them
====================  ==================================================================================
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}  # name -> package
SWANLAB_MODES = {"cloud": "online", "local": "local", "online": "online", "offline": "offline", "disabled": "disabled"}
NOTIFICATIONS = {"lark": "LarkCallback", "dingtalk": "DingTalkCallback", "email": "EmailCallback",
                 "discord": "DiscordCallback", "wxwork": "WXWorkCallback", "slack": "SlackCallback"}


@dataclass(frozen=True)
class TrackerSettings:
    report_to: tuple[str, ...] = ("tensorboard",)  # resolved: names from TRACKERS only
    run_name: str | None = None
    swanlab: dict = field(default_factory=dict)  # the --swanlab_* flags, without the prefix


def resolve_report_to(values: list[str]) -> tuple[str, ...]:
    """The trackers ``--report_to`` names, each checked to be installed (``all``: the installed ones)."""
    names = [v.lower() for v in values]
    unknown = [v for v in names if v not in (*TRACKERS, "all", "none")]
    if unknown:
        raise AlignkitError(f"--report_to {' '.join(unknown)}: not available; choose from "
                            f"{', '.join(TRACKERS)}, all or none")
    if "none" in names:
        if len(names) > 1:
            raise AlignkitError(f"--report_to {' '.join(values)}: none cannot be combined with trackers")
        return ()
    if "all" in names:
        return tuple(name for name, package in TRACKERS.items() if installed(package))
    for name in names:
        if not installed(TRACKERS[name]):
            raise AlignkitError(f"--report_to {name}: the {TRACKERS[name]} package is not installed "
                                f"(pip install {TRACKERS[name]})")
    return tuple(dict.fromkeys(names))


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_swanlab(options: dict) -> None:
    """ms-swift's checks of the swanlab flags, before anything is loaded."""
    method = options.get("notification_method")
    if method is not None and method not in NOTIFICATIONS:
        raise AlignkitError(f"--swanlab_notification_method {method}: choose from {', '.join(NOTIFICATIONS)}")
    if method == "email" and not all(options.get(k) for k in ("sender_email", "receiver_email", "smtp_server",
                                                               "smtp_port")):
        raise AlignkitError("--swanlab_notification_method email needs --swanlab_sender_email, "
                            "--swanlab_receiver_email, --swanlab_smtp_server and --swanlab_smtp_port")
    if options.get("mode") not in SWANLAB_MODES:
        raise AlignkitError(f"--swanlab_mode {options.get('mode')}: choose from {', '.join(SWANLAB_MODES)}")


def make_trackers(settings: TrackerSettings, run_dir: Path, *, resumed_at: int | None, config: dict) -> list:
    """accelerate trackers for ``settings.report_to``, started. ``resumed_at``: the step a resumed run goes on
    from; ``config``: the run's arguments, stored with the wandb and swanlab runs."""
    from accelerate.tracking import SwanLabTracker, TensorBoardTracker, WandBTracker

    run_name = settings.run_name or str(run_dir)  # ms-swift names a run by its output directory
    trackers = []
    for name in settings.report_to:
        if name == "tensorboard":
            # purge_step: TensorBoard hides the stopped run's events from there on; the resumed run rewrites them.
            purge = {"purge_step": resumed_at + 1} if resumed_at else {}
            trackers.append(TensorBoardTracker("runs", run_dir, **purge))
        elif name == "wandb":
            trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", "alignkit"), name=run_name,
                                         dir=str(run_dir), config=config))
        elif name == "swanlab":
            trackers.append(SwanLabTracker(**swanlab_init(settings.swanlab, run_dir, run_name, config)))
    for tracker in trackers:
        tracker.start()
    return trackers


def swanlab_init(options: dict, run_dir: Path, run_name: str, config: dict) -> dict:
    """swanlab.init's arguments from ms-swift's swanlab flags; logs in and registers a notification first."""
    import swanlab

    if options.get("token"):
        swanlab.login(api_key=options["token"])
    method = options.get("notification_method")
    if method is not None:
        from swanlab.plugin import notification

        callback_cls = getattr(notification, NOTIFICATIONS[method])
        if method == "email":
            callback = callback_cls(sender_email=options["sender_email"], receiver_email=options["receiver_email"],
                                    password=options.get("secret"), smtp_server=options["smtp_server"],
                                    port=options["smtp_port"], language=options.get("email_language") or "zh")
        else:
            callback = callback_cls(webhook_url=options.get("webhook_url"), secret=options.get("secret"))
        swanlab.register_callbacks([callback])
    return {"run_name": options.get("project") or "alignkit", "workspace": options.get("workspace"),
            "name": options.get("exp_name") or run_name, "mode": SWANLAB_MODES[options.get("mode") or "cloud"],
            "log_dir": str(run_dir / "swanlog"), "config": config}
