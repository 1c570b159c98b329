"""The rollout temperature over a run: fixed (--temperature), or annealed (--final_temperature).

The annealing is ColossalChat's ``AnnealingScheduler`` (coati/trainer/utils.py), which its GRPO trainer steps
once per optimizer step and reads before each rollout. After s optimizer steps, with T0 = --temperature,
T1 = --final_temperature, W = --temperature_hold_steps and A = --temperature_annealing_steps::

    T(s) = T0                      s <= W
           T0 - (s / A)(T0 - T1)   W < s < A     (the line from T0 at 0 to T1 at A: it jumps in after W)
           T1                      s >= A
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.errors import AlignkitError


@dataclass(frozen=True)
class TemperatureAnnealing:
    start: float
    end: float
    hold_steps: int
    annealing_steps: int

    def at(self, optimizer_steps: int) -> float:
        """The temperature of a rollout taken after ``optimizer_steps`` optimizer steps."""
        if optimizer_steps <= self.hold_steps:
            return self.start
        if optimizer_steps >= self.annealing_steps:
            return self.end
        return self.start - (optimizer_steps / self.annealing_steps) * (self.start - self.end)


def temperature_annealing(args) -> TemperatureAnnealing | None:
    """--final_temperature with its step counts, checked; None when the temperature is fixed."""
    if args.final_temperature is None:
        if args.temperature_annealing_steps is not None or args.temperature_hold_steps:
            raise AlignkitError("--temperature_hold_steps / --temperature_annealing_steps need --final_temperature "
                                "(the temperature annealed to)")
        return None
    if args.temperature_annealing_steps is None:
        raise AlignkitError("--final_temperature needs --temperature_annealing_steps (the optimizer step from which "
                            "it is used)")
    if args.temperature_annealing_steps < 0 or args.temperature_hold_steps < 0:
        raise AlignkitError("--temperature_hold_steps and --temperature_annealing_steps must be at least 0")
    if args.temperature <= 0 or args.final_temperature <= 0:
        raise AlignkitError("temperature annealing needs --temperature and --final_temperature above 0 (sampling)")
    return TemperatureAnnealing(args.temperature, args.final_temperature, args.temperature_hold_steps,
                                args.temperature_annealing_steps)
