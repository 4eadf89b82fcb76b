"""Typed configs: dataclass defaults -> YAML file -> ``key=value`` command-line overrides.

Every stage, PathoCLIP and evaluation describe their settings as dataclasses (nested dataclasses allowed) with
field docs in ``field(metadata={"help": ...})``. ``load_config`` layers the sources, checks every value
against the field's type and reports problems as ``ConfigError`` naming the config, the key and where the
value came from (``file.yaml:LINE`` or the command-line argument). A dataclass checks its own value ranges in
``__post_init__`` by raising ``ValueError``; that is reported the same way.

Why hand-written rather than OmegaConf / tyro: neither is a dependency, and what we need -- YAML scalars on
the command line, ``Literal`` choices, line numbers in errors and a ``--help`` built from field metadata -- is
about as long to write as to adapt. Shipped YAML files start with a header line ``# config: module:Class``
naming their dataclass (``CONFIG_HEADER``), so a test can load every one of them into the right class.

A CLI entry point is three lines::

    def main(argv=None):
        cfg = load_config_or_exit(SFTConfig, argv, prog="python -m stages.sft")
        train(cfg)
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "CONFIG_HEADER",
    "ConfigError",
    "Passthrough",
    "RenamedKeyWarning",
    "config_class_of",
    "from_dict",
    "help_text",
    "load_config",
    "load_config_or_exit",
    "save_yaml",
    "to_dict",
]

CONFIG_HEADER = "# config: "
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config could not be built: unknown key, wrong type, bad value, unreadable file."""


class RenamedKeyWarning(FutureWarning):
    """A config used a key's old name (``steps``); it still works, under the new one (``max_steps``)."""


@dataclasses.dataclass(frozen=True)
class Passthrough:
    """Schema of a mapping field whose keys are the fields of a library's own config (e.g. TRL's GRPOConfig).

    Put it in the field's metadata (``field(default_factory=dict, metadata={"passthrough": Passthrough(...)})``):
    every key is then checked against ``fields()`` (name -> type, computed only when the mapping is not empty,
    so the library is imported only when used) and every value converted to that type, with the same
    file:line / command-line origin in the error as any other field. ``owned`` names the keys our own config
    sets (key -> our field that sets it, None when pathor1 fixes the value), or is a callable returning that
    mapping; those keys are refused with a pointer to that field.
    """

    target: str
    fields: Any  # Callable[[], dict[str, type]]
    owned: Any = dataclasses.field(default_factory=dict)  # dict[str, str | None] | Callable[[], that]


def owned_key_message(target: str, key: str, source: str | None, prefix: str = "") -> str:
    """Why ``<target>.<key>`` cannot be passed through, and what to set instead."""
    if source is None:
        return f"pathor1 sets {target}.{key} itself to a fixed value; it cannot be changed"
    if source == "launcher":
        return f"pathor1 sets {target}.{key} from the launcher (accelerate / torchrun config); choose the engine there"
    return f"pathor1 sets {target}.{key} itself from '{prefix}{source}'; set that instead"


# ----------------------------------------------------------------------------------------------- types


def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # classes defined inside functions: annotations may not resolve; use them as written
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def type_name(tp) -> str:
    """A short readable name for a field type, e.g. ``float``, ``str | None``, ``'grpo' | 'dapo'``."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """Raised inside coercion; turned into a ConfigError that names the key and the value's origin."""


def _coerce(value, tp, raw: str | None = None):
    """Return ``value`` converted to type ``tp`` or raise _Mismatch. ``raw`` is the command-line text."""
    if tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch()
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, raw)
            except (_Mismatch, ConfigError):
                continue
        raise _Mismatch()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        for choice in args:  # `mode=1` on the command line must still match Literal["1"]
            if value == choice and type(value) is type(choice) or str(value) == str(choice) == raw:
                return choice
        raise _Mismatch()  # the message shows the type, which lists the choices
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        return _coerce_sequence(value, tp, origin or tp, args)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch()
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value)
        raise _Mismatch()
    return _coerce_scalar(value, tp, raw)


def _coerce_sequence(value, tp, origin, args):
    if not isinstance(value, (list, tuple)):
        raise _Mismatch()
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _Mismatch(f"expected {len(args)} items")
        items = [_coerce(v, a) for v, a in zip(value, args)]
    else:
        elem = args[0] if args else Any
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_coerce(v, elem))
            except _Mismatch:
                raise _Mismatch(f"item {i} ({v!r}) is not {type_name(elem)}") from None
    return origin(items)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce_scalar(value, tp, raw):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch()
    if isinstance(value, bool):  # bool is an int subclass: never let `true` pass as a number or a string
        raise _Mismatch()
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch()
    if tp is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _Mismatch()
    if tp is str:
        if isinstance(value, str):
            return value
        if raw is not None:  # keep what was typed: `run=007` stays "007"
            return raw
        if isinstance(value, (int, float)):
            return str(value)
        raise _Mismatch()
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        raise _Mismatch(f"expected one of {', '.join(repr(m.value) for m in tp)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch()


# ------------------------------------------------------------------------------------- dict <-> config


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg) -> dict:
    """The config as plain YAML/JSON types (nested dicts, lists, str for paths)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def _default_of(f: dataclasses.Field):
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _flat_names(cls, prefix="") -> list[str]:
    names = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        names.append(prefix + f.name)
        if dataclasses.is_dataclass(hints.get(f.name)):
            names += _flat_names(hints[f.name], f"{prefix}{f.name}.")
    return names


def _where(origins: dict, key: str) -> str:
    return f" (from {origins[key]})" if key in origins else ""


def from_dict(cls, d: dict, *, _prefix: str = "", _origins: dict | None = None, _root=None):
    """Build ``cls`` from a (nested) dict, checking keys and types; missing keys keep their defaults."""
    origins, root = _origins or {}, _root or cls
    if not isinstance(d, dict):
        raise ConfigError(f"{root.__name__}{'.' + _prefix[:-1] if _prefix else ''}: expected a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    d = _current_names(cls, d, _prefix, origins, root)
    for key in d:
        if key not in fields:
            dotted = _prefix + str(key)
            close = difflib.get_close_matches(dotted, _flat_names(root), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{root.__name__}: unknown key '{dotted}'{_where(origins, dotted)}{hint}")
    hints, kwargs = _hints(cls), {}
    for name, f in fields.items():
        dotted = _prefix + name
        tp = hints.get(name, Any)
        if not f.init:  # derived in __post_init__; to_dict writes it, so a saved config still loads back
            continue
        if name not in d:
            if f.default is _MISSING and f.default_factory is _MISSING and f.init:
                raise ConfigError(f"{root.__name__}: missing required key '{dotted}' ({type_name(tp)})")
            continue
        value = d[name]
        if "passthrough" in f.metadata and isinstance(value, dict):
            kwargs[name] = _check_passthrough(f.metadata["passthrough"], value, dotted, _prefix, origins, root)
            continue
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = _current_names(tp, value, dotted + ".", origins, root)  # before the defaults are merged in
            base = _default_of(f)  # keep a customised default, e.g. default_factory=lambda: Lora(r=16)
            merged = _merge(to_dict(base), value) if dataclasses.is_dataclass(base) else value
            kwargs[name] = from_dict(tp, merged, _prefix=dotted + ".", _origins=origins, _root=root)
            continue
        try:
            kwargs[name] = _coerce(value, tp, origins.get(("raw", dotted)))
        except _Mismatch as e:
            detail = f"{e}; " if str(e) else ""
            raise ConfigError(
                f"{root.__name__}.{dotted}{_where(origins, dotted)}: {detail}expected {type_name(tp)}, "
                f"got {value!r} ({type(value).__name__})"
            ) from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # range checks in __post_init__
        where = f"{root.__name__}{'.' + _prefix[:-1] if _prefix else ''}"
        raise ConfigError(f"{where}: invalid value: {e}") from None


def renamed_keys(cls) -> dict[str, str]:
    """Old name -> new name for ``cls`` (only the renames whose new name is a field of ``cls``)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {old: new for old, new in getattr(cls, "RENAMED", {}).items() if new in names and old not in names}


def _current_names(cls, d: dict, prefix: str, origins: dict, root) -> dict:
    """``d`` with old key names (``cls.RENAMED``, e.g. steps -> max_steps) moved to the new ones, each with a
    RenamedKeyWarning that names both; both names set at once is an error."""
    renames = {old: new for old, new in renamed_keys(cls).items() if old in d}
    if not renames:
        return d
    out = dict(d)
    for old, new in renames.items():
        was, now = prefix + old, prefix + new
        if new in out:
            raise ConfigError(f"{root.__name__}: '{was}'{_where(origins, was)} is the old name of '{now}'"
                              f"{_where(origins, now)}; set only '{now}'")
        out[new] = out.pop(old)
        for key in (was, ("raw", was)):
            if key in origins:
                origins[now if key == was else ("raw", now)] = origins[key]
        warnings.warn(f"{root.__name__}: '{was}'{_where(origins, was)} is deprecated; use '{now}'",
                      RenamedKeyWarning, stacklevel=2)
    return out


def _check_passthrough(schema: Passthrough, value: dict, dotted: str, prefix: str, origins: dict, root) -> dict:
    """The mapping with each key checked against ``schema`` and each value converted to the key's type."""
    if not value:
        return {}
    owned = schema.owned() if callable(schema.owned) else schema.owned
    for key in value:  # before fields(), which imports the library (TRL: ~8 s): an owned key is refused at once
        if key in owned:
            path = f"{dotted}.{key}"
            raise ConfigError(f"{root.__name__}.{path}{_where(origins, path)}: "
                              f"{owned_key_message(schema.target, key, owned[key], prefix)}")
    allowed, out = schema.fields(), {}
    for key, item in value.items():
        path = f"{dotted}.{key}"
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{dotted}.{close[0]}'?" if close else ""
            raise ConfigError(f"{root.__name__}: unknown key '{path}'{_where(origins, path)}: "
                              f"{schema.target} has no field '{key}'{hint}")
        try:
            out[key] = _coerce(item, allowed[key], origins.get(("raw", path)))
        except _Mismatch as e:
            detail = f"{e}; " if str(e) else ""
            raise ConfigError(f"{root.__name__}.{path}{_where(origins, path)}: {detail}expected "
                              f"{type_name(allowed[key])} ({schema.target}.{key}), got {item!r} "
                              f"({type(item).__name__})") from None
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------ YAML files


def _yaml_lines(node, prefix="", out=None) -> dict[str, int]:
    """Dotted key -> 1-based line of that key in the YAML file (for error messages)."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            out[dotted] = key_node.start_mark.line + 1
            _yaml_lines(value_node, dotted + ".", out)
    return out


def _read_yaml(path: str | Path) -> tuple[dict, dict[str, str]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
        lines = _yaml_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a config file must be a mapping of keys to values, got {type(data).__name__}")
    return data, {k: f"{path}:{line}" for k, line in lines.items()}


def save_yaml(cfg, path: str | Path) -> Path:
    """Write ``cfg`` as YAML with the ``# config: module:Class`` header, so it loads back with load_config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = type(cfg)
    header = f"{CONFIG_HEADER}{cls.__module__}:{cls.__qualname__}\n"
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False))
    return path


def config_class_of(path: str | Path) -> type:
    """The dataclass a YAML file names in its first line ``# config: package.module:ClassName``."""
    path = Path(path)
    with path.open() as fh:
        first = fh.readline().strip()
    if not first.startswith(CONFIG_HEADER.strip()):
        raise ConfigError(
            f"{path}:1: missing header line '{CONFIG_HEADER}package.module:ClassName' naming the config class"
        )
    target = first[len(CONFIG_HEADER.strip()):].strip()
    module_name, _, qualname = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{path}:1: cannot import config class '{target}': {e}") from None
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"{path}:1: '{target}' is not a dataclass")
    return obj


# --------------------------------------------------------------------------------------- command line


def _parse_value(raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:  # e.g. `name=[oops`: keep the text; a type check reports it if it matters
        return raw


def _set_dotted(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[last] = value


def _default_text(f: dataclasses.Field, parent_default=None) -> str:
    # A nested config's defaults come from the parent's default instance (it may customise them).
    default = _default_of(f) if parent_default is None else getattr(parent_default, f.name)
    if default is _MISSING:
        return "(required)"
    return repr(_plain(default))


def help_text(cls, prog: str | None = None) -> str:
    """Usage plus every field (dotted for nested configs) with its type, default and help."""
    prog = prog or Path(sys.argv[0]).name
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc.startswith(f"{cls.__name__}("):  # dataclass's generated docstring carries no information
        doc = ""
    lines = [f"usage: {prog} [--config FILE.yaml] [key=value ...]", ""]
    if doc:
        lines += [doc, ""]
    lines += [
        "options:",
        "  -h, --help            show this help and exit",
        "  --config FILE.yaml    read values from a YAML file (command-line key=value wins)",
        "  --print-config        print the resolved config as YAML and exit",
        "",
        f"fields of {cls.__name__} (override with key=value or nested.key=value; values are YAML scalars):",
    ]
    lines += _field_lines(cls, "")
    return "\n".join(lines) + "\n"


def _field_lines(cls, prefix: str, parent_default=None) -> list[str]:
    out, hints = [], _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, Any)
        if dataclasses.is_dataclass(tp):
            own = _default_of(f) if parent_default is None else getattr(parent_default, f.name)
            out += _field_lines(tp, f"{prefix}{f.name}.", own if dataclasses.is_dataclass(own) else None)
            continue
        out.append(f"  {prefix}{f.name}: {type_name(tp)} = {_default_text(f, parent_default)}")
        if f.metadata.get("help"):
            out.append(f"      {f.metadata['help']}")
    return out


def load_config(cls, argv: list[str] | None = None, *, prog: str | None = None):
    """Build ``cls`` from its defaults, then ``--config FILE.yaml``, then ``key=value`` arguments.

    ``--help`` prints every field and exits 0; ``--print-config`` prints the resolved YAML and exits 0.
    Problems raise ConfigError (see ``load_config_or_exit`` for the CLI flavour).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(help_text(cls, prog))
        raise SystemExit(0)
    values: dict = {}
    origins: dict = {}
    overrides: list[str] = []
    print_config = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(argv):
                    raise ConfigError("--config needs a file name: --config FILE.yaml")
                i += 1
                path = argv[i]
            else:
                path = arg.split("=", 1)[1]
            data, lines = _read_yaml(path)
            values = _merge(values, data)
            origins.update(lines)
        elif arg == "--print-config":
            print_config = True
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            hint = f" (write it as {arg.lstrip('-')}=VALUE)" if arg.startswith("--") else ""
            raise ConfigError(f"unexpected argument '{arg}'{hint}; expected key=value, --config FILE or --help")
        i += 1
    for arg in overrides:  # after every file, whatever the order on the line: the command line wins
        key, raw = arg.split("=", 1)
        key = key.strip()
        override: dict = {}
        _set_dotted(override, key, _parse_value(raw))
        values = _merge(values, override)
        origins[key] = f"command-line argument '{arg}'"
        origins[("raw", key)] = raw
    cfg = from_dict(cls, values, _origins=origins)
    if print_config:
        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg


def load_config_or_exit(cls, argv: list[str] | None = None, *, prog: str | None = None):
    """``load_config`` for ``main()``: a ConfigError prints ``prog: error: ...`` and exits with status 2; an old
    key name prints ``prog: warning: ...`` (one line) and loads."""
    prog = prog or Path(sys.argv[0]).name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RenamedKeyWarning)
        try:
            cfg, error = load_config(cls, argv, prog=prog), None
        except ConfigError as e:
            cfg, error = None, e
    for w in caught:  # one line each, not Python's two-line "file:line: Warning" form
        if issubclass(w.category, RenamedKeyWarning):
            print(f"{prog}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if error is not None:
        print(f"{prog}: error: {error} (--help lists every field)", file=sys.stderr)  # one line, as every CLI error
        raise SystemExit(2) from None
    return cfg
