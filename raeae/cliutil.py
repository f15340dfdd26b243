"""Flags from frozen config dataclasses, so every config field has exactly one CLI flag and one help.

A field's flag is its name with dashes (``patch_size`` -> ``--patch-size``); its help comes from the
field's ``metadata["help"]`` and its default is shown. Nested config dataclasses (a ``ModelConfig``
inside ``TrainConfig``) contribute their own flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _int_tuple(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fmt_default(value) -> str:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return repr(value) if value == "" else str(value)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     _seen: set[str] | None = None) -> None:
    """Add one flag per field of config dataclass ``cls`` and of its nested configs. A nested field
    whose name the outer config already has (``model`` in a nested ``RestoreConfig``) shares its flag;
    names in ``skip`` get no flag."""
    seen = set() if _seen is None else _seen
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    seen.update(f.name for f in fields if not _is_config(hints[f.name]))
    for f in fields:
        tp = hints[f.name]
        if f.name in skip:
            continue
        if _is_config(tp):
            add_config_flags(parser, tp, skip + tuple(seen), seen)
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} [default: {_fmt_default(f.default)}]"
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            parser.add_argument(flag, dest=f.name, choices=[e.value for e in tp], default=None, help=help_text)
        elif tp == tuple[int, ...]:
            parser.add_argument(flag, dest=f.name, type=_int_tuple, default=None, metavar="N,N,...",
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(cls: type, args: argparse.Namespace, base=None, **fixed):
    """Build ``cls`` from parsed flags: flags left unset keep ``base``'s values (a preset's recipe),
    or the field defaults when there is no base."""
    return config_from_values(cls, {k: v for k, v in vars(args).items() if v is not None}, base, **fixed)


def config_from_values(cls: type, values: dict, base=None, **fixed):
    """Build ``cls`` from settings by field name, nested configs' fields included (``patch_size`` sets
    ``model.patch_size``), as flags name them: settings not given keep ``base``'s values, or the field
    defaults. Enum fields take their value (``"jpeg"``) or the member. The CLI and the library build
    configs with this one function, so the same request gives the same config."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
        elif _is_config(tp):
            if isinstance(values.get(f.name), tp):  # a whole nested config given as one
                kwargs[f.name] = values[f.name]
            else:
                kwargs[f.name] = config_from_values(tp, values, getattr(base, f.name, None), **fixed)
        elif values.get(f.name) is not None:
            value = values[f.name]
            kwargs[f.name] = tp(value) if isinstance(tp, type) and issubclass(tp, enum.Enum) else value
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def config_from_settings(cls: type, settings: dict, base=None):
    """``config_from_values`` for the library's keyword arguments: a name that is no setting of ``cls``
    fails with one line (a typo must not be silently ignored)."""
    unknown = {k for k, v in settings.items() if v is not None} - field_names(cls)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    return config_from_values(cls, settings, base)


def field_names(cls: type) -> set[str]:
    """Every setting ``config_from_values`` takes for ``cls``: its fields and its nested configs' fields."""
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        if _is_config(hints[f.name]):
            names |= field_names(hints[f.name])
    return names


def given(args: argparse.Namespace, name: str) -> bool:
    """Whether the user gave flag ``name`` (unset flags parse to None)."""
    return getattr(args, name, None) is not None


def require_settings(cfg, *names: str) -> None:
    """One line for the first of ``names`` that ``cfg`` leaves empty (``--input is required``)."""
    for name in names:
        if not getattr(cfg, name):
            raise ValueError(f"--{name.replace('_', '-')} is required")
