"""The configuration reference, generated from ``rps.config`` so that it cannot drift.

Usage: ``python -m rps.config_docs docs/configuration.md`` (what ``make docs`` runs).

Each key's default is the dataclass field's default; its meaning is the field's entry in the
``Attributes:`` section of its dataclass docstring; the valid choices come from
``rps.config.CHOICES``. ``tests/test_config_docs.py`` checks that the committed file equals the
generated text and that every key has a meaning.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

import yaml

from rps.config import CHOICES, Config

HEADER = """<!-- Generated from rps/config.py by `make docs` (python -m rps.config_docs). Do not edit:
     change the dataclass docstrings in rps/config.py and run `make docs` again. -->

# Configuration reference

A run is configured by one validated object, `rps.config.Config`. Values are taken, in this
order, from the defaults below, then the YAML file given with `--config` (`configs/*.yaml`),
then `key=value` overrides on the command line:

```bash
rps train --config configs/default.yaml train.epochs=10 data.image_size=128 augment.enabled=false
```

Each value is parsed by the key's type (`null` for an empty optional value, `true`/`false`,
numbers as in YAML). An unknown key, a wrong type or a value out of range stops the command
before any work starts, with a message that names the key and suggests the closest valid one.
The resolved config is written to the run folder as `config.yaml`, and
`rps train --config saved_models/<run>/config.yaml` repeats that run.
"""


def field_descriptions(cls: type) -> dict[str, str]:
    """Read the ``Attributes:`` section of a dataclass docstring.

    Returns:
        ``{field name: description}``, continuation lines joined with spaces, for the names
        listed in the section (which may be fewer than the fields).
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    _, found, section = doc.partition("\nAttributes:\n")
    descriptions: dict[str, str] = {}
    name = None
    for line in section.splitlines() if found else ():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry = re.match(r"(\w+): (.*)", line.strip())
        if indent <= 4 and entry:
            name = entry.group(1)
            descriptions[name] = entry.group(2)
        elif indent > 4 and name:
            descriptions[name] += " " + line.strip()
        else:  # a line back at the section's level ends the section
            break
    return descriptions


def _summary(cls: type) -> str:
    """The docstring's text before ``Attributes:``, as one paragraph."""
    doc = inspect.cleandoc(cls.__doc__ or "").split("\nAttributes:\n")[0]
    return " ".join(doc.split())


def _markdown(text: str) -> str:
    """reStructuredText literals (double backticks) as Markdown code; ``|`` escaped for tables."""
    return re.sub(r"``(.+?)``", r"`\1`", text).replace("|", "\\|")


def _yaml_value(value) -> str:
    """A default as it would be written in a YAML config file."""
    text = yaml.safe_dump({"v": value}, default_flow_style=True, width=10_000).strip()
    return text[len("{v: "):-1]


def _type_name(type_) -> str:
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    return f"{args[0].__name__} or null" if args else type_.__name__


def config_rows(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """One ``(key, type, default, meaning)`` row per leaf key of ``cls``, in field order,
    sections after the top-level keys; ``meaning`` is ``""`` where the docstring has none."""
    hints = typing.get_type_hints(cls)
    descriptions = field_descriptions(cls)
    rows, sections = [], []
    for field in dataclasses.fields(cls):
        type_ = hints[field.name]
        if dataclasses.is_dataclass(type_):
            sections.append((field.name, type_))
            continue
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())
        key = prefix + field.name
        meaning = descriptions.get(field.name, "")
        if key in CHOICES:
            meaning += " One of: " + ", ".join(f"``{c}``" for c in CHOICES[key]) + "."
        rows.append((key, _type_name(type_), _yaml_value(default), meaning.strip()))
    for name, type_ in sections:
        rows += config_rows(type_, prefix + name + ".")
    return rows


def undocumented_keys() -> list[str]:
    """Keys whose dataclass docstring gives no meaning (each should have one)."""
    return [key for key, _, _, meaning in config_rows() if not meaning]


def describe_config() -> str:
    """The configuration reference as Markdown: one table per section (key, type, default,
    meaning), headed by the section dataclass's summary."""
    rows = config_rows()
    hints = typing.get_type_hints(Config)
    sections = [("", "Top level", Config)] + [
        (f.name + ".", f"`{f.name}`", hints[f.name]) for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])]
    out = [HEADER]
    for prefix, title, cls in sections:
        out += [f"## {title}", "", _markdown(_summary(cls)), "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, type_name, default, meaning in rows:
            if (key.startswith(prefix) and "." not in key[len(prefix):]) if prefix else "." not in key:
                out.append(f"| `{key}` | {type_name} | `{_markdown(default)}` | {_markdown(meaning)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write the reference to the file named in ``argv`` (default: print it)."""
    argv = sys.argv[1:] if argv is None else argv
    text = describe_config()
    if argv:
        Path(argv[0]).write_text(text)
        print(f"wrote {argv[0]} ({len(config_rows())} keys)")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
