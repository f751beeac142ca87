"""SWCI's grammar: HPE's commands as a table of patterns, a pure parser, help and completion.

Each :class:`Spec` is a pattern such as ``WAIT FOR IP <host> [<port:port>] [<retries:count>]``:
UPPERCASE words are keywords (matched case-insensitively), ``<field:type>`` takes one word
into a field of the command (``str`` unless a type is given; ``<field...>`` takes the rest of
the line) and ``[...]`` groups are optional. Matching backtracks, taking an optional group
before skipping it. A line that fits no pattern gives one :class:`ParseError` line saying what
was expected after which word, with a did-you-mean for a misspelt keyword. The same table
answers ``HELP`` and tab completion, so the three never disagree.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmlearn.errors import ConfigError
from swarmlearn.swci import commands as c


class ParseError(ConfigError):
    """A line that is not a command: one line saying what was expected."""


# ------------------------------------------------------------------ value types


def _port(word: str) -> int:
    value = int(word)
    if not 0 < value < 65536:
        raise ValueError
    return value


def _count(word: str) -> int:
    value = int(word)
    if value < 1:
        raise ValueError
    return value


def _seconds(word: str) -> float:
    value = float(word)
    if not 0 <= value < float("inf"):
        raise ValueError
    return value


def _positive_seconds(word: str) -> float:
    value = _seconds(word)
    if value <= 0:
        raise ValueError
    return value


def _on_off(word: str) -> bool:
    if word.upper() not in ("ON", "OFF"):
        raise ValueError
    return word.upper() == "ON"


TYPES: Mapping[str, tuple[Callable[[str], Any], str]] = {
    "str": (str, ""),
    "port": (_port, "a port 1..65535"),
    "count": (_count, "a whole number >= 1"),
    "seconds": (_seconds, "a number of seconds >= 0"),
    "timeout": (_positive_seconds, "a number of seconds > 0"),
    "onoff": (_on_off, "ON or OFF"),
}
CHOICES: Mapping[str, list[str]] = {"onoff": ["ON", "OFF"]}  # completed like keywords


# ------------------------------------------------------------------ patterns


@dataclass(frozen=True)
class Element:
    keyword: str = ""  # a keyword, or "" for a placeholder
    name: str = ""  # the placeholder's field
    type: str = "str"
    rest: bool = False  # takes every remaining word
    group: int = -1  # index of its optional group, -1 if required
    group_end: int = 0  # for the first element of a group: the index after the group

    def describe(self) -> str:
        if self.keyword:
            return self.keyword
        hint = TYPES[self.type][1]
        return f"<{self.name}>" + (f" ({hint})" if hint else "")


def compile_pattern(pattern: str) -> tuple[Element, ...]:
    """``"GET CONTEXT INFO [<name>]"`` as elements (flat; groups marked by index)."""
    elements: list[Element] = []
    group, group_start = -1, -1
    for word in pattern.replace("[", " [ ").replace("]", " ] ").split():
        if word == "[":
            group = group_start = len(elements)
            continue
        if word == "]":
            first = elements[group_start]
            elements[group_start] = Element(
                first.keyword, first.name, first.type, first.rest, group, len(elements)
            )
            group = -1
            continue
        if word.startswith("<"):
            name, _, kind = word.strip("<>").partition(":")
            rest = name.endswith("...")
            element = Element("", name.removesuffix("..."), kind or "str", rest, group)
        else:
            element = Element(keyword=word.upper(), group=group)
        elements.append(element)
    return tuple(elements)


@dataclass(frozen=True)
class Spec:
    """One form of one command: its pattern, what it builds and what it does."""

    pattern: str
    build: type[c.Command]
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def elements(self) -> tuple[Element, ...]:
        return compile_pattern(self.pattern)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The leading keywords: the command's name (``GET CONTEXT INFO``)."""
        words: list[str] = []
        for element in self.elements:
            if not element.keyword or element.group >= 0:
                break
            words.append(element.keyword)
        return tuple(words)


SPECS: tuple[Spec, ...] = (
    Spec("CREATE CONTEXT <name> WITH IP <host> [<port:port>]", c.CreateContext,
         "Create a context pointing at an SN's node API (default port 30304)."),
    Spec("SWITCH CONTEXT <name>", c.SwitchContext, "Make a context the active one."),
    Spec("LIST CONTEXTS", c.ListContexts, "List the contexts; * marks the active one."),
    Spec("GET CONTEXT INFO [<name>]", c.GetContextInfo,
         "Show a context (default: the active one)."),
    Spec("SET CONTEXT ENV <name> <variable> <value>", c.SetContextEnv,
         "Set a variable of a context."),
    Spec("GET CONTEXT ENV <name> <variable>", c.GetContextEnv, "Read a variable of a context."),
    Spec("LIST CONTEXT ENV <name>", c.ListContextEnv, "List the variables of a context."),
    Spec("LIST NODES", c.ListNodes, "Registered SN, SL and SWOP nodes (not SWCI)."),
    Spec("CREATE CONTRACT <name> [WITH MERGE <merge_method>]", c.CreateContract,
         "Register a training contract (merge method default mean)."),
    Spec("GET CONTRACT INFO <name>", c.GetContractInfo, "A contract's static information."),
    Spec("GET CONTRACT STATUS <name>", c.GetContractStatus,
         "A contract's current round, rounds done and whether training is over."),
    Spec("LIST CONTRACTS", c.ListContracts, "List the training contracts."),
    Spec("PERFDATA <name>", c.Perfdata,
         "Per node: its latest round, loss, metric, completed and total epochs."),
    Spec("RESET CONTRACT <name>", c.ResetContract,
         "Start a contract over (rounds and history); cannot be undone."),
    Spec("LIST ROUNDS [<contract>]", c.ListRounds,
         "Sync rounds: participants, merged hash, duration (default: every contract)."),
    Spec("CREATE TASK FROM <path>", c.CreateTaskFrom, "Create a task from a task YAML file."),
    Spec("FINALIZE TASK <name>", c.FinalizeTask, "Make a task immutable (needed to assign it)."),
    Spec("GET TASK INFO <name>", c.GetTaskInfo, "A task's type, author, prerequisite, state."),
    Spec("GET TASK BODY <name>", c.GetTaskBody, "A task's body."),
    Spec("LIST TASKS", c.ListTasks, "List the tasks."),
    Spec("DELETE TASK <name>", c.DeleteTask, "Delete a task that is not finalized."),
    Spec("CREATE TASKRUNNER <name>", c.CreateTaskRunner, "Create a taskrunner."),
    Spec("ASSIGN TASK <task> TO <runner> WITH <peers:count> PEERS", c.AssignTask,
         "Run a task on n peers of a taskrunner."),
    Spec("ASSIGN TASK <task> TO <runner> WITH ALL PEERS", c.AssignTask,
         "Run a task on every SWOP listening to the taskrunner.", {"peers": 0}),
    Spec("ASSIGN TASK <task> TO <runner> TARGET <target>", c.AssignTask,
         "Run a task on one SWOP (its node id): add a peer or retry a failed one."),
    Spec("GET TASKRUNNER STATUS <name>", c.GetTaskRunnerStatus,
         "Task, peer type, state, active/completed/failed peers, ledger heights."),
    Spec("GET TASKRUNNER INFO <name>", c.GetTaskRunnerInfo, "A taskrunner's information."),
    Spec("GET TASKRUNNER PEER STATUS <name> <peer>", c.GetTaskRunnerPeerStatus,
         "One peer's state and reason (its index in LIST TASKRUNNER PEERS or its node id)."),
    Spec("LIST TASKRUNNERS", c.ListTaskRunners, "List the taskrunners."),
    Spec("LIST TASKRUNNER PEERS <name>", c.ListTaskRunnerPeers,
         "The peers enrolled in a taskrunner, with their state."),
    Spec("RESET TASKRUNNER <name>", c.ResetTaskRunner, "Reset a taskrunner for its next task."),
    Spec("WAIT FOR TASKRUNNER <name> [<timeout_s:timeout>]", c.WaitForTaskRunner,
         "Wait until the taskrunner's task is done, printing # (default 120 minutes)."),
    Spec("WAIT FOR IP <host> [<port:port>] [<retries:count>]", c.WaitForIp,
         "Wait until host:port accepts connections (default 30304; 360 tries 5 s apart)."),
    Spec("SLEEP <seconds:seconds>", c.Sleep, "Pause."),
    Spec("EXIT ON FAILURE [<on:onoff>]", c.ExitOnFailure,
         "Stop a script at the first failing command (bare: ON; default OFF)."),
    Spec("EXIT", c.Exit, "Leave SWCI."),
    Spec("HELP [<topic...>]", c.Help, "List the commands, or explain the ones starting so."),
    Spec("CD <path>", c.Cd, "Change the directory that relative task paths start from."),
    Spec("PWD", c.Pwd, "Print the current directory."),
)  # fmt: skip


# ------------------------------------------------------------------ matching


@dataclass(frozen=True)
class _Failure:
    depth: int  # index of the word that did not fit (len(words): the line ended)
    expected: frozenset[str]
    keyword_expected: frozenset[str]

    def merge(self, other: _Failure) -> _Failure:
        if self.depth != other.depth:
            return self if self.depth > other.depth else other
        return _Failure(
            self.depth,
            self.expected | other.expected,
            self.keyword_expected | other.keyword_expected,
        )


_END = "the end of the command"


def _match(
    elements: tuple[Element, ...], i: int, words: list[str], j: int, values: dict[str, Any]
) -> dict[str, Any] | _Failure:
    if i == len(elements):
        return values if j == len(words) else _Failure(j, frozenset([_END]), frozenset())
    element = elements[i]
    if element.group == i:  # the start of an optional group: take it, else skip it
        taken = _match_one(elements, i, words, j, values)
        if isinstance(taken, dict):
            return taken
        skipped = _match(elements, element.group_end, words, j, values)
        return skipped if isinstance(skipped, dict) else taken.merge(skipped)
    return _match_one(elements, i, words, j, values)


def _match_one(
    elements: tuple[Element, ...], i: int, words: list[str], j: int, values: dict[str, Any]
) -> dict[str, Any] | _Failure:
    element = elements[i]
    described = frozenset([element.describe()])
    if j == len(words):
        keywords = frozenset([element.keyword]) if element.keyword else frozenset()
        return _Failure(j, described, keywords)
    word = words[j]
    if element.keyword:
        if word.upper() != element.keyword:
            return _Failure(j, described, frozenset([element.keyword]))
        return _match(elements, i + 1, words, j + 1, values)
    if element.rest:
        values = {**values, element.name: words[j:]}
        return _match(elements, len(elements), words, len(words), values)
    convert = TYPES[element.type][0]
    try:
        value = convert(word)
    except ValueError:
        return _Failure(j, described, frozenset())
    return _match(elements, i + 1, words, j + 1, {**values, element.name: value})


def split_words(line: str) -> list[str]:
    """The words of a line, shell-style (quotes keep spaces); a ParseError for a bad quote."""
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError as error:
        raise ParseError(f"cannot split {line.strip()!r} into words: {error}") from None


def parse(line: str) -> c.Command:
    """The command a line of text stands for, or a ParseError saying what was expected."""
    words = split_words(line)
    if not words:
        raise ParseError("empty command (HELP lists the commands)")
    candidates = [s for s in SPECS if s.elements[0].keyword == words[0].upper()]
    if not candidates:
        firsts = sorted({s.elements[0].keyword for s in SPECS})
        raise ParseError(f"unknown command {words[0]!r}{_did_you_mean(words[0], firsts)}"
                         " (HELP lists the commands)")  # fmt: skip
    failures: list[tuple[_Failure, Spec]] = []
    for spec in candidates:
        found = _match(spec.elements, 0, words, 0, {})
        if isinstance(found, dict):
            values = {**spec.fixed, **found}
            if "topic" in values:
                values["topic"] = tuple(values["topic"])
            return spec.build(**values)
        failures.append((found, spec))
    depth = max(f.depth for f, _ in failures)
    deepest = [(f, s) for f, s in failures if f.depth == depth]
    failure = deepest[0][0]
    for other, _ in deepest[1:]:
        failure = failure.merge(other)
    raise ParseError(_explain(words, failure, [s for _, s in deepest]))


def _explain(words: list[str], failure: _Failure, candidates: list[Spec]) -> str:
    name = " ".join(_common_prefix([s.keywords for s in candidates]))
    expected = sorted(failure.expected, key=lambda e: (e == _END, e))
    wanted = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " or " + expected[-1]
    after = f" after {words[failure.depth - 1]!r}" if failure.depth > 0 else ""
    if failure.depth == len(words):
        got = ", got nothing"
    elif expected == [_END]:
        return f"{name}: unexpected {words[failure.depth]!r}{after} (HELP {name})"
    else:
        word = words[failure.depth]
        got = f", got {word!r}" + _did_you_mean(word, sorted(failure.keyword_expected))
    return f"{name}: expected {wanted}{after}{got} (HELP {name})"


def _did_you_mean(word: str, keywords: list[str]) -> str:
    close = difflib.get_close_matches(word.upper(), keywords, n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else ""


def _common_prefix(sequences: list[tuple[str, ...]]) -> tuple[str, ...]:
    prefix = sequences[0]
    for other in sequences[1:]:
        size = 0
        while size < min(len(prefix), len(other)) and prefix[size] == other[size]:
            size += 1
        prefix = prefix[:size]
    return prefix


# ------------------------------------------------------------------ help and completion


def usage(spec: Spec) -> str:
    """The pattern as people read it: ``WAIT FOR IP <host> [<port>] [<retries>]``."""
    shown = re.sub(r"<\w+:onoff>", "ON|OFF", spec.pattern)
    return re.sub(r":\w+>", ">", shown)


def help_text(topic: Iterable[str] = ()) -> str:
    """Every command (no topic), or those whose keywords start with the topic's words."""
    wanted = tuple(word.upper() for word in topic)
    chosen = [s for s in SPECS if s.keywords[: len(wanted)] == wanted]
    if not chosen:
        firsts = sorted({" ".join(s.keywords[: len(wanted)]) for s in SPECS})
        raise ParseError(
            f"HELP: no command starts with {' '.join(topic)!r}"
            f"{_did_you_mean(' '.join(wanted), firsts)} (HELP lists the commands)"
        )
    width = max(len(usage(s)) for s in chosen)
    return "\n".join(f"{usage(s):{width}}  {s.summary}" for s in chosen)


def completions(words_before: list[str], prefix: str) -> list[str]:
    """Keywords that may come next after ``words_before`` and start with ``prefix``."""
    found: set[str] = set()
    for spec in SPECS:
        elements = spec.elements
        for position in _positions(elements, 0, words_before, 0):
            for i in _closure(elements, position):
                element = elements[i]
                words = [element.keyword] if element.keyword else CHOICES.get(element.type, [])
                found.update(w for w in words if w.startswith(prefix.upper()))
    return sorted(found)


def _closure(elements: tuple[Element, ...], i: int) -> list[int]:
    """Element indexes reachable from ``i`` by skipping optional groups."""
    reached = []
    while i < len(elements):
        reached.append(i)
        if elements[i].group != i:
            break
        i = elements[i].group_end
    return reached


def _positions(elements: tuple[Element, ...], i: int, words: list[str], j: int) -> list[int]:
    """Element indexes the pattern can be at after matching ``words[j:]`` (any placeholder
    value fits)."""
    if j == len(words):
        return [i]
    found: list[int] = []
    for k in _closure(elements, i):
        element = elements[k]
        if element.rest:
            continue
        if element.keyword and element.keyword != words[j].upper():
            continue
        found += _positions(elements, k + 1, words, j + 1)
    return found
