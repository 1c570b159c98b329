"""`--response_length`: ms-swift's older spelling of --max_completion_length (its PPO examples use it)."""

from alignkit.cli import build_parser, parse_command_line


def values(argv):
    return parse_command_line(build_parser(), argv)[1]


def test_response_length_is_max_completion_length():
    assert values(["rlhf", "--rlhf_type", "ppo", "--response_length", "64"])["max_completion_length"] == 64
    later = ["rlhf", "--max_completion_length", "32", "--response_length", "64"]
    assert values(later)["max_completion_length"] == 64
