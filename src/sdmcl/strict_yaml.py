"""The one YAML reader (and writer) of sdmcl: plain data only, every surprise refused by line.

Configs, experiment files, command-line override values and the `config.yaml` of run
directories are all read here. YAML 1.1 (what PyYAML implements) turns some innocent
looking text into other things; this loader accepts only what a config can mean and
refuses the rest with `FILE:LINE: key: what; how to fix it`:

- mappings with text keys (a duplicated key, a key YAML reads as a number, boolean or
  null, and merge keys `<<` are refused), lists, and the scalars text, integer, float,
  boolean and null;
- refused: anchors and aliases (`&a`, `*a`), dates and timestamps (`2024-01-01`), other
  YAML-only types (`!!binary`, `!!set`, `!!omap`, `!!pairs`, any `!tag`), sexagesimal
  numbers (`1:30`) and leading-zero octal integers (`010`);
- numbers in exponent form without a dot (`1e-3`, `5E4`) are floats (YAML 1.1 would read
  them as text), in this reader and in the writer (`dump_yaml` quotes text that would
  read back as a number).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from sdmcl.errors import ConfigError

TAG = "tag:yaml.org,2002:"
# '1e-3', '-2.5E+4', '.5e3': exponent form, with or without a dot (YAML 1.1 needs both a dot
# and a signed exponent). Added after the standard resolvers, so plain integers stay ints.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
OCTAL_INT = re.compile(r"^[-+]?0[0-7_]+$")
MAX_DEPTH = 100  # nesting deeper than this is not a config (and would exhaust the stack)


class YAMLFileError(ConfigError):
    """A YAML text that is not plain config data; the message names file, line and key."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _Refusal(event.start_mark, f"alias *{event.anchor} refused: anchors and aliases are not supported; "
                                             "write the values out in full")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refusal(event.start_mark, f"anchor &{anchor} refused: anchors and aliases are not supported; "
                                             "write the values out in full")
        return super().compose_node(parent, index)


class _StrictDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True  # a value used twice is written twice: the reader refuses aliases


for _cls in (_StrictLoader, _StrictDumper):
    _cls.add_implicit_resolver(TAG + "float", EXPONENT_FLOAT, list("-+0123456789."))


class _Refusal(Exception):
    def __init__(self, mark, message: str):
        super().__init__(message)
        self.mark = mark
        self.message = message


def _where(source: str, mark) -> str:
    return f"{source}:{mark.line + 1}" if mark is not None else source


def _key_label(path: str) -> str:
    return f"{path}: " if path else ""


def _check(node, path: str, source: str, depth: int = 0) -> None:
    """Refuse everything in the composed tree that is not plain config data."""
    if depth > MAX_DEPTH:
        raise _Refusal(node.start_mark, f"nested more than {MAX_DEPTH} levels deep; a config is a few levels of keys")
    if isinstance(node, MappingNode):
        if node.tag != TAG + "map":
            raise _Refusal(node.start_mark, f"{_key_label(path)}the YAML type {node.tag.replace(TAG, '!!')} is not supported; "
                                            "use a plain mapping")
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == TAG + "merge":
                raise _Refusal(key_node.start_mark, f"{_key_label(path)}merge key '<<' refused; write the keys out in full")
            if not isinstance(key_node, ScalarNode):
                raise _Refusal(key_node.start_mark, f"{_key_label(path)}a {'list' if isinstance(key_node, SequenceNode) else 'mapping'} "
                                                    "used as a key; keys must be names")
            if key_node.tag != TAG + "str":
                shown, kind = key_node.value, key_node.tag.replace(TAG, "").replace("bool", "a boolean").replace("null", "null")
                raise _Refusal(key_node.start_mark, f"{_key_label(path)}key {shown!r} is read by YAML as {kind}, not text; "
                                                    f"keys must be names (quote it: '{shown}')")
            key = key_node.value
            if key in seen:
                raise _Refusal(key_node.start_mark, f"{path + '.' if path else ''}{key}: duplicate key (first given on line "
                                                    f"{seen[key]}); keep only one")
            seen[key] = key_node.start_mark.line + 1
            _check(value_node, f"{path}.{key}" if path else key, source, depth + 1)
    elif isinstance(node, SequenceNode):
        if node.tag != TAG + "seq":
            raise _Refusal(node.start_mark, f"{_key_label(path)}the YAML type {node.tag.replace(TAG, '!!')} is not supported; "
                                            "use a plain list")
        for i, item in enumerate(node.value):
            _check(item, f"{path}[{i}]", source, depth + 1)
    else:
        _check_scalar(node, path)


def _check_scalar(node: ScalarNode, path: str) -> None:
    tag, text = node.tag, node.value
    label = _key_label(path)
    if tag == TAG + "timestamp":
        raise _Refusal(node.start_mark, f"{label}{text} is read by YAML as a date; quote it ('{text}') if it is a name")
    if tag not in (TAG + "str", TAG + "int", TAG + "float", TAG + "bool", TAG + "null"):
        raise _Refusal(node.start_mark, f"{label}the YAML type {tag.replace(TAG, '!!')} is not supported; "
                                        "give text, a number, true/false or null")
    if node.style is None and tag in (TAG + "int", TAG + "float"):  # unquoted, implicitly typed
        if ":" in text:
            raise _Refusal(node.start_mark, f"{label}{text} is read by YAML 1.1 as a base-60 number; "
                                            f"quote it ('{text}') if it is text, or write the number")
        if tag == TAG + "int" and OCTAL_INT.match(text) and text.strip("-+0_"):
            raise _Refusal(node.start_mark, f"{label}{text} is read by YAML 1.1 as an octal number; "
                                            "write it without the leading zero (or quote it if it is text)")


def loads_yaml(text: str, source: str = "<text>") -> Any:
    """Parse one YAML document of plain data (None when the text holds no document)."""
    loader = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, "", source)
        return loader.construct_document(node)
    except _Refusal as r:
        raise YAMLFileError(f"{_where(source, r.mark)}: {r.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "not valid YAML"
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise YAMLFileError(f"{where}: malformed YAML ({problem}); fix the syntax there") from None
    except yaml.YAMLError as e:  # reader errors: characters YAML does not allow
        line = text.count("\n", 0, getattr(e, "position", 0) or 0) + 1
        char = getattr(e, "character", None)
        code = ord(char) if isinstance(char, str) and char else char
        what = f"the character #x{code:04x}" if isinstance(code, int) else "a character"
        raise YAMLFileError(f"{source}:{line}: {what} is not allowed in YAML text; remove it") from None
    except RecursionError:
        raise YAMLFileError(f"{source}: nested too deeply to be a config") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """`loads_yaml` of a file read as UTF-8 (a BOM is allowed); errors name the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise YAMLFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise YAMLFileError(f"{path}:{line}: not UTF-8 text (byte {e.start}); a config is a YAML text file") from None
    return loads_yaml(text, str(path))


def dump_yaml(data: Any) -> str:
    """YAML text of plain data that `loads_yaml` reads back as the same data."""
    return yaml.dump(data, Dumper=_StrictDumper, sort_keys=False, allow_unicode=True)
