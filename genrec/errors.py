"""Errors a user can cause, and how the command line reports them: one line, no traceback.

Code raises a :class:`UserError` subclass (or another error the command line knows, e.g.
``FileNotFoundError``) whose message names the file, key, flag, item or user and the value;
:func:`user_error` finds it in an exception chain (jsonargparse and Lightning wrap what an
``__init__`` raises). Parse errors of jsonargparse are summarised by :func:`parse_error_line`:
the key, where it came from (a flag or ``file:line`` of a YAML) and, for an unknown key, the
closest valid one.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class UserError(Exception):
    """An error the user can fix (a setting, an input file, a flag); the message is one line that
    names what is wrong and its value."""


class ConfigError(UserError, ValueError):
    """A setting outside its valid range; the message names the key and the value."""


class ArtifactError(UserError, ValueError):
    """A file a stage reads is unreadable (truncated, not the expected format) or was made from
    something else (another catalogue); the message names the file."""


class UsageError(UserError):
    """The command line or a config file does not parse (unknown key, wrong type); exit code 2."""


class Interrupted(UserError):
    """The run was stopped by SIGTERM (e.g. a ``timeout``) where it keeps its finished work; the
    message says what is kept and how to resume. Exit code 143 (128 + SIGTERM), as a process
    killed by the signal would have."""


def check(owner: str, name: str, value: Any, ok: bool, requirement: str) -> None:
    """Raise :class:`ConfigError` ``"<owner>: <name> must be <requirement>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{owner}: {name} must be {requirement}, got {value!r}")


def at_least(owner: str, minimum: int | float, **values: Any) -> None:
    """Each of ``values`` (``None`` allowed: unset) is ``>= minimum``."""
    for name, value in values.items():
        check(owner, name, value, value is None or value >= minimum, f">= {minimum}")


def positive(owner: str, **values: Any) -> None:
    """Each of ``values`` (``None`` allowed: unset) is ``> 0``."""
    for name, value in values.items():
        check(owner, name, value, value is None or value > 0, "> 0")


def user_error(error: BaseException, known: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``error``'s chain (itself, then its causes / contexts) that is a
    :class:`UserError` or one of ``known``; ``None`` when there is none (a bug: show the traceback)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (UserError, *known)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a ``KeyError`` unquoted, newlines joined with "; ")."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    return "; ".join(parts) or type(error).__name__


_GENERIC = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value type:|"
    r"Given value:|Expected a <class 'NoneType'>)"
)


def parse_error_line(error: BaseException, parser: Any, args: Sequence[str]) -> str:
    """jsonargparse's error ``error`` (raised while ``parser`` parsed ``args``) as one line.

    Names the key (dotted, as in a YAML), where its value came from (``--flag`` or ``file:line``),
    the value, and for an unknown key the closest valid key (``did you mean kcore?``).
    """
    message = str(error)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    path = [m[1] for line in lines if (m := re.search(r'Parser key "([^"]+)":', line))]
    classes = [m[1] for line in lines if (m := re.search(r"Problem with given class_path '([^']+)':", line))]

    if m := re.match(r"unrecognized arguments: (.*)", message, re.IGNORECASE | re.DOTALL):
        flag = next((token for token in m[1].split() if token.startswith("-")), m[1].split()[0] if m[1].split() else "")
        return f"unknown flag {flag}{_suggest(flag.split('=')[0], _options(parser))}"

    unknown = re.search(r"Option '([^']+)' is not accepted", message) or re.search(r"Key '([^']+)' is not expected", message)
    if m := re.search(r"(?:Group '([^']+)'|Subcommand '[^']+') does not accept option '([^']+)'", message):
        group, _, key = ((f"{m[1]}." if m[1] else "") + m[2]).rpartition(".")
        path = [group] if group else []
        candidates = [o[len(group) + 3 :] for o in _options(parser) if o.startswith(f"--{group}.")] if group else _options(parser)
    elif unknown:
        key = unknown[1]
        candidates = _init_parameters(classes[-1]) if classes else []
    else:
        return _value_error_line(path, lines, args)
    return f"unknown key {'.'.join([*path, key])} ({_origin(path, key, args)}){_suggest(key, candidates)}"


def _value_error_line(path: list[str], lines: list[str], args: Sequence[str]) -> str:
    """A value of the right key but the wrong type or form."""
    specific = [re.sub(r'^Parser key "[^"]+":\s*', "", line.lstrip("- ")) for line in lines
                if not _GENERIC.match(line) and not line.startswith(("- Problem", "Problem"))]
    specific = [line for line in specific if line]
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    detail = "; ".join(dict.fromkeys(specific)) or (lines[-1] if lines else "invalid value")
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail).replace("Expected a ", "expected ").replace(". Got value: ", ", got ")
    if given is not None and "got " not in detail:
        detail += f" (got {given})"
    if not path:
        return detail
    key = path[-1].rsplit(".", 1)[-1]
    return f"{'.'.join(path)} ({_origin(path[:-1] or path[-1].split('.')[:-1], key, args)}): {detail}"


def _suggest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _options(parser: Any) -> list[str]:
    """Every ``--option`` of ``parser`` and of its subcommand parsers."""
    found: list[str] = []
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in getattr(current, "_actions", []):
            found.extend(s for s in action.option_strings if s.startswith("--"))
            stack.extend(getattr(action, "_name_parser_map", {}).values())
    return sorted(set(found))


def _init_parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameter names of an already imported class (nothing is imported here)."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    if not isinstance(cls, type):
        return []
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _origin(path: Sequence[str], key: str, args: Sequence[str]) -> str:
    """Where ``key`` (under the dotted ``path``) was given: the flag, or ``file:line`` of a config."""
    top = path[0] if path else ""
    for token in args:
        if not token.startswith("--") or (token == "--config" and key != "config"):
            continue
        name = token.split("=", 1)[0][2:]
        parts = name.split(".")
        if parts[-1] == key and (not top or parts[0] == top.split(".")[0]):
            return f"flag {token.split('=', 1)[0]}"
    for file in _config_files(args):
        line = _yaml_line(file, top.split(".")[0] if top else "", key)
        if line:
            return f"{file}:{line}"
    return "command line or config"


def _config_files(args: Sequence[str]) -> list[str]:
    files = [args[i + 1] for i, token in enumerate(args[:-1]) if token in ("--config", "-c")]
    files += [token.split("=", 1)[1] for token in args if token.startswith("--config=")]
    return files


def _yaml_line(file: str, top: str, key: str) -> int | None:
    """The line of ``key:`` inside the top-level block ``top:`` of a YAML file (1-based)."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError:
        return None
    inside = not top
    for number, line in enumerate(text.splitlines(), start=1):
        if top and re.match(rf"{re.escape(top)}\s*:", line):
            inside = True
            continue
        if top and inside and re.match(r"[^\s#]", line):
            inside = False
        if inside and re.match(rf"\s*(- )?{re.escape(key)}\s*:", line):
            return number
    return None


__all__ = [
    "ArtifactError",
    "ConfigError",
    "UsageError",
    "UserError",
    "at_least",
    "check",
    "one_line",
    "parse_error_line",
    "positive",
    "user_error",
]
