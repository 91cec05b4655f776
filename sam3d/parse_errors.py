"""Short ``sam3d: error:`` lines for what the command-line parser refuses (jsonargparse's messages).

A misspelt option or config key gets the closest known option ("did you mean"); a value outside a
``Literal`` gets the allowed values; anything else its innermost reason. The usage (80 lines of options)
is left to ``--help``. Light: no torch or Lightning import (the parser has them loaded already).
"""

from __future__ import annotations

import ast
import difflib
import re
from argparse import ArgumentParser
from collections.abc import Callable, Sequence

# jsonargparse's wording (4.x); a message in another form is shown as it is.
UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<args>.*)$", re.DOTALL)
NOT_ACCEPTED_IN_CONFIG = re.compile(
    r"^Subcommand '(?P<subcommand>\w+)' does not accept option '(?P<key>[^']+)'"
)
# The class's own message ends where the union's next subtype error or its "Given value" starts.
CLASS_PROBLEM = re.compile(
    r"Problem with given class_path '(?P<path>[\w.]+)':\s*\n(?P<inner>.*?)(?=\n    - |\n  Given value|\Z)",
    re.DOTALL,
)
OPTION_NOT_ACCEPTED = re.compile(r"Option '(?P<key>[\w.]+)' is not accepted")
PARSER_KEY = re.compile(r'Parser key "(?P<key>[\w.]+)":')
LITERAL = re.compile(r"Literal\[(?P<values>[^\]]*)\]")
EXPECTED = re.compile(r"Expected (?:a |an )?(?P<what>.+?)\.? Got value: (?P<value>.*)$", re.MULTILINE)
BOOLEAN = ("true", "false")
GIVEN_VALUE = re.compile(r"^\s*Given value: (?P<value>.*)$", re.MULTILINE)
INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>[^)]*)\)")


def parser_options(parser: ArgumentParser) -> list[str]:
    """The dotted keys a parser accepts (``trainer.max_epochs``), without ``--`` and the ``.help`` ones."""
    keys = []
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and not option.endswith(".help") and option != "--help":
                keys.append(option[2:])
    return keys


def class_options(class_path: str) -> list[str]:
    """The ``__init__`` arguments of the class at a dotted path, as jsonargparse reads them (none if unknown)."""
    from jsonargparse import ArgumentParser as ClassParser

    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(__import__(module, fromlist=[name]), name)
        parser = ClassParser(exit_on_error=False)
        parser.add_class_arguments(found)
    except Exception:  # noqa: BLE001  (a suggestion is a courtesy: none when the class cannot be read)
        return []
    return parser_options(parser)


def closest(key: str, options: Sequence[str]) -> str | None:
    """The known option closest to a misspelt ``key`` (whole key first, then its section and the rest)."""
    if found := difflib.get_close_matches(key, options, n=1, cutoff=0.75):
        return found[0]
    section, _, rest = key.partition(".")
    sections = sorted({option.split(".", 1)[0] for option in options})
    matches = difflib.get_close_matches(section, sections, n=1, cutoff=0.6)
    if not matches:
        return None
    in_section = [option for option in options if option.startswith(matches[0] + ".")]
    if rest and (found := difflib.get_close_matches(f"{matches[0]}.{rest}", in_section, n=1, cutoff=0.6)):
        return found[0]
    return f"{matches[0]}.*" if rest else matches[0]


def allowed_values(message: str) -> list[str]:
    """The values the ``Literal`` types in a message allow (``null`` where None is one of the types)."""
    values: list[str] = []
    for match in LITERAL.finditer(message):
        try:
            parsed = ast.literal_eval(f"[{match['values']}]")
        except (ValueError, SyntaxError):
            continue
        values += [str(value) for value in parsed if str(value) not in values]
    if values and "NoneType" in message:
        values.append("null")
    return values


def _did_you_mean(key: str, options: Sequence[str], dashes: str) -> str:
    suggestion = closest(key, options)
    return f"; did you mean {dashes}{suggestion}?" if suggestion else ""


def _type_name(what: str) -> str:
    """``<class 'int'>`` as ``int``; other descriptions as they are."""
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", what)


def _value_problem(key: str, message: str) -> str:
    """``--key value: allowed values ...`` or ``--key value: expected ...`` from a bad value's message."""
    given = GIVEN_VALUE.search(message)
    expected = list(EXPECTED.finditer(message))
    value = (given or (expected[-1] if expected else None) or {"value": None})["value"]
    shown = f"--{key} {value}" if value is not None else f"--{key}"
    if allowed := allowed_values(message):
        return f"{shown}: not an allowed value; allowed values: {', '.join(allowed)}"
    if expected:
        what = _type_name(expected[-1]["what"])
        if what == "bool":
            return f"{shown}: not an allowed value; allowed values: {', '.join(BOOLEAN)}"
        return f"{shown}: expected {what}"
    reasons = [line.strip(" -") for line in message.splitlines()[1:] if line.strip(" -")]
    return f"{shown}: {reasons[0] if reasons else 'not a valid value'}"


def error_lines(
    message: str,
    options: Sequence[str],
    options_of_class: Callable[[str], Sequence[str]] = class_options,
    subcommands: Sequence[str] = (),
) -> list[str]:
    """What went wrong, one problem a line, each naming the option, with the fix where it is known.

    Args:
        message: jsonargparse's error message.
        options: The keys the (sub)command accepts (:func:`parser_options`).
        options_of_class: The keys a ``class_path`` accepts (for ``--model.*`` options).
        subcommands: The names allowed in place of a subcommand (commands and utilities).
    """
    if match := UNRECOGNIZED.match(message):
        lines = []
        for token in match["args"].split():
            if token.startswith("-"):
                key = token.lstrip("-").split("=", 1)[0]
                lines.append(f"unknown option --{key}{_did_you_mean(key, options, '--')}")
        return lines or [message]
    if match := NOT_ACCEPTED_IN_CONFIG.match(message):
        key = match["key"]
        return [
            f"config key {key} is not an option of sam3d {match['subcommand']}{_did_you_mean(key, options, '')}"
        ]
    if match := INVALID_CHOICE.search(message):
        choices = [choice.strip(" '") for choice in match["choices"].split(",")]
        known = [*choices, *(name for name in subcommands if name not in choices)]
        suggestion = difflib.get_close_matches(match["given"], known, n=1, cutoff=0.6)
        hint = f"; did you mean {suggestion[0]}?" if suggestion else ""
        return [f"unknown subcommand {match['given']!r}{hint} (subcommands: {', '.join(known)})"]
    outer = PARSER_KEY.match(message)
    if (problem := CLASS_PROBLEM.search(message)) and outer:
        section, inner = outer["key"], problem["inner"]
        if match := OPTION_NOT_ACCEPTED.search(inner):
            key = f"{section}.{match['key']}"
            known = [f"{section}.{option}" for option in options_of_class(problem["path"])]
            class_name = problem["path"].rsplit(".", 1)[-1]
            return [f"{class_name} has no option {key}{_did_you_mean(key, known, '--')}"]
        if match := PARSER_KEY.search(inner):
            return [_value_problem(f"{section}.{match['key']}", inner[match.start() :])]
        reason = next((line.strip() for line in inner.splitlines() if line.strip()), inner)
        return [f"--{section}: {reason}"]
    if outer:
        return [_value_problem(outer["key"], message)]
    return [message]
