"""Number words that prompts may use for counts ("three red circles", "a blue square").

Shared by the built-in task's prompt parser (`builtin.shapes`) and the detector reward
(`rewards.detection`), neither of which should import the other. Standard library only.
"""

from __future__ import annotations

NUMBER_WORDS: dict[str, int] = {
    "zero": 0,
    "no": 0,
    "one": 1,
    "a": 1,
    "an": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
