"""Compose's variable interpolation and ``.env`` files, for tests that read ``docker-compose.yaml``.

What the Compose Specification (section "Interpolation") defines and Docker Compose does:

- ``$$`` is a literal ``$``; ``$VAR`` and ``${VAR}`` are the variable's value (empty if unset);
- ``${VAR:-default}`` the default when VAR is unset or empty, ``${VAR-default}`` only when unset;
- ``${VAR:?message}`` an error when VAR is unset or empty, ``${VAR?message}`` only when unset;
- ``${VAR:+alt}`` alt when VAR is set and not empty, ``${VAR+alt}`` alt when set (else empty);
- a default or alternative value is interpolated in turn (``${A:-${B}}``, as Compose v2 does);
- any other ``$`` (``$1``, ``${}``, ``${A B}``, an unclosed ``${``) is an invalid template;
- every string value of the file is interpolated, recursively; mapping keys are not.

The values come from an env file (``--env-file``, ``.env``): ``KEY=VALUE`` lines, blank lines
and ``#`` comment lines. An unquoted value ends at a ``#`` preceded by white space; a value in
matching single or double quotes is taken as is, without the quotes. (Compose lets the shell's
environment override the file; these helpers take the mapping they are given, nothing else.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NAME = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
_BRACED = re.compile(r"(?P<name>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


class InterpolationError(ValueError):
    """A value could not be interpolated; ``path`` says where it is in the file."""

    path: tuple[str | int, ...] = ()

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path)
        return f"{where}: {self.reason}" if where else self.reason


class InvalidTemplate(InterpolationError):
    def __init__(self, template: str) -> None:
        super().__init__(f"invalid interpolation format in {template!r}")
        self.template = template


class MissingRequiredValue(InterpolationError):
    """``${VAR:?message}`` with VAR unset or empty, or ``${VAR?message}`` with VAR unset."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"required variable {variable} is missing a value: {message}")
        self.variable = variable
        self.message = message


def _closing_brace(template: str, start: int) -> int:
    """The index of the ``}`` that closes the ``${`` whose body begins at ``start``."""
    depth = 1
    i = start
    while i < len(template):
        if template.startswith("$$", i):
            i += 2
            continue
        if template.startswith("${", i):
            depth += 1
            i += 2
            continue
        if template[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InvalidTemplate(template)


def _substitute(body: str, env: Mapping[str, str], template: str) -> str:
    match = _BRACED.fullmatch(body)
    if match is None:
        raise InvalidTemplate(template)
    name, op, arg = match["name"], match["op"], match["arg"]
    value = env.get(name)
    is_set = value is not None
    is_filled = bool(value)
    if op is None:
        return value or ""
    if op in (":-", "-"):
        use_default = not is_filled if op == ":-" else not is_set
        return interpolate(arg, env) if use_default else value  # type: ignore[return-value]
    if op in (":?", "?"):
        missing = not is_filled if op == ":?" else not is_set
        if missing:
            raise MissingRequiredValue(name, arg or name)
        return value  # type: ignore[return-value]
    # ":+" and "+"
    use_alternative = is_filled if op == ":+" else is_set
    return interpolate(arg, env) if use_alternative else ""


def interpolate(template: str, env: Mapping[str, str]) -> str:
    """``template`` with every ``$`` expression replaced as Compose does (see the module's doc)."""
    out: list[str] = []
    i = 0
    while True:
        dollar = template.find("$", i)
        if dollar < 0:
            out.append(template[i:])
            return "".join(out)
        out.append(template[i:dollar])
        following = template[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            i = dollar + 2
        elif following == "{":
            end = _closing_brace(template, dollar + 2)
            out.append(_substitute(template[dollar + 2 : end], env, template))
            i = end + 1
        else:
            name = NAME.match(template, dollar + 1)
            if name is None:
                raise InvalidTemplate(template)
            out.append(env.get(name.group()) or "")
            i = name.end()


def interpolate_config(value: Any, env: Mapping[str, str], path: tuple[str | int, ...] = ()) -> Any:
    """A copy of ``value`` (parsed YAML) with every string interpolated; keys and non-strings as is.

    Errors carry the path of the value that failed, e.g. ``services.web.environment.SECRET``.
    """
    if isinstance(value, str):
        try:
            return interpolate(value, env)
        except InterpolationError as exc:
            exc.path = path
            raise
    if isinstance(value, dict):
        return {key: interpolate_config(item, env, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate_config(item, env, (*path, index)) for index, item in enumerate(value)]
    return value


def parse_env_file(text: str) -> dict[str, str]:
    """The variables of an env file (see the module's doc); a later line wins over an earlier one."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped.removeprefix("export ").lstrip()
        key, sep, raw = stripped.partition("=")
        key = key.strip()
        if not sep or not NAME.fullmatch(key):
            raise ValueError(f"line {number}: expected KEY=VALUE, got {line!r}")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]
        else:
            value = re.split(r"\s#", raw, maxsplit=1)[0].rstrip()
        values[key] = value
    return values
