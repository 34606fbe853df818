"""Config machinery: typed, validated stage configs, profiles, and the one parameter parser.

One dataclass per notebook (:mod:`glmd_lib.config.stages`), one config = one experiment. Each notebook's
single ``parameters`` cell holds exactly the fields of its config class, all ``None`` by default, which
means "take the profile's value"; ``glmd_lib.notebook.start`` turns them into a config: the profile
(``smoke``, ``demo``, ``gpu``, ``paper``), then the explicit values, validated *before* any work starts.
Unknown keys and wrong types raise :class:`ConfigError` naming the key.

Value checks: every float must be finite, and a field may declare its range in ``param`` (``ge``, ``gt``,
``le``, ``lt``: ``param(8, "...", ge=1)``); :meth:`StageConfig.validate` enforces both for every field, so
``-p temperature=nan`` or ``-p keep_tokens=-5`` fails before anything runs, naming the parameter and the
allowed values.

A field declared with ``param(..., shared=True)`` has one meaning in every notebook that declares it
(``teacher``, ``seed`` ...): ``glmd run -p seed=1`` sends it to all of them. Any other key that several
notebooks declare must be addressed by stage (``stage1.lr=2e-3``); :func:`parse_params` reads both forms.

Profiles:
  smoke  tiny random models built from configs with the real teacher tokenizer; seconds per notebook (CI)
  demo   the real teacher (SmolLM2-135M-Instruct); the whole pipeline in about 30 minutes on 2 CPU cores
  gpu    a larger run for one or more GPUs (all tasks, longer training); NOT the paper's configuration
  paper  the authors' settings where the workbench can express them (README: "Settings that differ from
         the paper" lists what it cannot yet, and every other difference)
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import math
import operator
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from glmd_lib.artifacts import REPO_ROOT, atomic_write_json, provenance, stage_dir

PROFILES = ("smoke", "demo", "gpu", "paper", "compare")
DEFAULT_PROFILE = "demo"
# a profile that starts from another's values: a stage's table for it holds only what differs (or nothing)
PROFILE_PARENT = {"compare": "demo"}


class ConfigError(ValueError):
    """A parameter is unknown, has the wrong type or an invalid value."""


def param(default: Any, help: str, shared: bool = False, **extra: Any) -> Any:
    """A config field with help text (shown in the notebook and in ``glmd params``).

    ``shared=True``: the key means the same in every notebook that declares it, so ``glmd run`` sends a
    bare ``-p key=value`` to all of them instead of asking for ``stage.key``. ``ge=``, ``gt=``, ``le=``,
    ``lt=``: the allowed range of a number (None, where the type allows it, is always allowed).
    """
    metadata = {"help": help, "shared": shared, **extra}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# type checking / coercion
# --------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(arg)}]"
    if origin is dict:
        return "dict[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "] ('KEY:VALUE,...' on a command line)"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _type_error(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"parameter {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError. Only lossless conversions are made."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"parameter {key!r}: {value!r} is not one of {list(choices)}")
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, tp)
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # "CB, RTE" from a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, tp)
        return [_coerce(f"{key}[{i}]", v, arg) for i, v in enumerate(value)]
    if origin is dict:
        return _coerce_dict(key, value, tp)
    return _coerce_scalar(key, value, tp)


def _coerce_dict(key: str, value: Any, tp: Any) -> dict:
    """A mapping from YAML or Python, or ``"CB:50,COPA:50"`` from a command line (a YAML mapping under a stage
    section would be read as nested sections, so the command line and YAML files give the string form)."""
    key_type, value_type = typing.get_args(tp) or (Any, Any)
    if isinstance(value, str):
        parts = [p.split(":", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in parts):
            raise _type_error(key, value, tp)
        value = {k.strip(): v.strip() for k, v in parts}
    if not isinstance(value, dict):
        raise _type_error(key, value, tp)
    return {_coerce(f"{key}[{k!r}]", k, key_type): _coerce(f"{key}[{k!r}]", v, value_type) for k, v in value.items()}


def _coerce_union(key: str, value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    # try the exact type first so that 3 stays an int in `int | float`
    for arg in sorted(args, key=lambda a: 0 if isinstance(value, a if isinstance(a, type) else ()) else 1):
        if arg is not type(None):
            with contextlib.suppress(ConfigError):
                return _coerce(key, value, arg)
    raise _type_error(key, value, tp)


def _coerce_scalar(key: str, value: Any, tp: Any) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if number and float(value).is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.replace("_", ""))
    elif tp is float:
        if number:
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _type_error(key, value, tp)


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def allowed_range(f: dataclasses.Field) -> str:
    """The range a field declares, as text: ``"> 0 and <= 1"`` ("" when it declares none)."""
    return " and ".join(f"{sign} {f.metadata[k]}" for k, (_, sign) in _BOUNDS.items() if k in f.metadata)


def check_value(f: dataclasses.Field, value: Any) -> None:
    """A ConfigError naming the field unless ``value`` is finite (floats) and within the field's range (for a
    mapping: each of its values)."""
    if isinstance(value, dict):
        for v in value.values():
            check_value(f, v)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"parameter {f.name!r} must be a finite number, got {value}")
    if any(k in f.metadata and not ok(value, f.metadata[k]) for k, (ok, _) in _BOUNDS.items()):
        none = " (or None)" if f.default is None else ""
        raise ConfigError(f"parameter {f.name!r} must be {allowed_range(f)}{none}, got {value!r}")


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------

@dataclass
class StageConfig:
    """Fields every stage shares. Subclasses set ``stage`` (the run sub-directory) and ``profiles``."""

    stage: ClassVar[str] = ""
    notebook: ClassVar[str] = ""
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}

    run_dir: str | None = param(None, "run directory; every stage writes into <run_dir>/<stage>/ "
                                      "(default: $GLMD_RUN_DIR, else runs/<profile> in the repository)",
                                shared=True)
    profile: Literal["smoke", "demo", "gpu", "paper", "compare"] | None = param(  # = PROFILES (tests/test_config.py)
        None, "smoke (tiny random models, CI) | demo (real teacher, ~30 min on 2 cores) | gpu (larger GPU run) | "
              "paper (the authors' settings, GPU) | compare (demo's teacher and data, stages sized for glmd "
              "compare's grid on 2 cores); default: $GLMD_PROFILE, else demo", shared=True)
    seed: int = param(0, "random seed for everything this stage draws", shared=True, ge=0)
    device: str = param("auto", "auto (CUDA > MPS > CPU) or an explicit torch device such as cpu or cuda:0",
                        shared=True)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def shared_keys(cls) -> set[str]:
        """Fields declared ``shared=True``: one meaning in every notebook, so a bare ``-p key=value`` is sent
        to every notebook that declares the key (see :func:`glmd_lib.pipeline.validate`)."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("shared")}

    @classmethod
    def check_keys(cls, keys: typing.Iterable[str]) -> None:
        unknown = sorted(set(keys) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} for {cls.__name__} "
                              f"({cls.notebook or cls.stage}); known: {cls.field_names()}")

    @classmethod
    def resolve(cls, profile: str | None = None, **params: Any):
        """Profile defaults, then explicit ``params`` (``None`` = not given), validated."""
        cls.check_keys(params)
        profile = profile or params.pop("profile", None) or os.environ.get("GLMD_PROFILE") or DEFAULT_PROFILE
        params.pop("profile", None)
        if profile not in PROFILES:
            raise ConfigError(f"parameter 'profile': {profile!r} is not one of {list(PROFILES)}")
        values: dict[str, Any] = cls.profile_defaults(profile)
        values.update({k: v for k, v in params.items() if v is not None})
        values["profile"] = profile
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        cfg = cls(**coerced)
        if cfg.run_dir is None:
            cfg.run_dir = os.environ.get("GLMD_RUN_DIR") or str(REPO_ROOT / "runs" / profile)
        # full type check of the defaults too (catches a profile table typo)
        for f in dataclasses.fields(cfg):
            setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name), hints[f.name]))
        cfg.validate()
        return cfg

    @classmethod
    def profile_defaults(cls, profile: str) -> dict[str, Any]:
        """This stage's table for ``profile``, on top of its parent profile's (``PROFILE_PARENT``), if any."""
        parent = PROFILE_PARENT.get(profile)
        return {**(cls.profile_defaults(parent) if parent else {}), **cls.profiles.get(profile, {})}

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]):
        """Build from a notebook's globals: every field name present there is a parameter."""
        params = {k: namespace[k] for k in cls.field_names() if k in namespace}
        return cls.resolve(**params)

    @classmethod
    def from_json(cls, path: Path | str):
        data = json.loads(Path(path).read_text())
        data = data.get("config", data)
        cls.check_keys(data)
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})

    def validate(self) -> None:
        """Value checks beyond types: every float finite, every number within its declared range
        (:func:`check_value`); subclasses add checks that involve several fields (and call super)."""
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))

    # ---- use ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def out_dir(self) -> Path:
        """``<run_dir>/<stage>/`` (created)."""
        return stage_dir(self.run_dir, self.stage)

    def save(self, directory: Path | str | None = None) -> Path:
        """Write the resolved config with git commit and package versions as ``config.json``."""
        directory = Path(directory) if directory is not None else self.out_dir
        return atomic_write_json(directory / "config.json",
                                 {"stage": self.stage, "config": self.to_dict(), **provenance()})

    def _repr_html_(self) -> str:
        helps = self.field_help()
        rows = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(repr(v))}</code></td>"
            f"<td style='text-align:left'>{html.escape(helps.get(k, ''))}</td></tr>"
            for k, v in self.to_dict().items())
        return (f"<b>{type(self).__name__}</b> (profile <code>{self.profile}</code>)"
                f"<table><tr><th>parameter</th><th>value</th><th style='text-align:left'>meaning</th></tr>"
                f"{rows}</table>")


# --------------------------------------------------------------------------------------------
# parameters from the command line and YAML files (glmd run, glmd stage1)
# --------------------------------------------------------------------------------------------

def parse_params(pairs: list[str] | None = None, files: list[str] | None = None) -> dict[str, Any]:
    """Parameters from YAML files, then ``key=value`` pairs (the pairs win), as one flat dict.

    Values are parsed as YAML, as papermill's ``-y`` would: ``tasks=[CB,RTE]`` is a list, ``steps=3`` an int,
    ``flag=true`` a bool; a value that is not valid YAML stays a string; an empty value means "not given".
    A key may name a stage: ``stage1.lr=2e-3``, or in YAML a section ``stage1: {lr: 2e-3}``; sections come
    back flattened to ``"stage1.lr"``. Which keys need a stage is the pipeline's business (it knows the
    notebooks); this function only reads.
    """
    params: dict[str, Any] = {}
    for f in files or []:
        params.update(_flatten(_read_yaml(Path(f)), str(f)))
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"parameter {pair!r} is not of the form key=value")
        key, raw = (part.strip() for part in pair.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        params.update(_flatten({key: value}, f"-p {pair}"))
    return params


def _read_yaml(path: Path) -> dict[str, Any]:
    """A parameter file's mapping; a ConfigError naming the file (and the line of a YAML error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"parameter file {path} cannot be read ({reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"parameter file {path}{where}: not valid YAML ({problem}); fix it there "
                          f"(format: key: value, or stage: {{key: value}})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of key: value, not a {type(data).__name__}")
    return data


def _flatten(data: dict, source: str) -> dict[str, Any]:
    """``{"stage1": {"lr": 1}, "seed": 0}`` -> ``{"stage1.lr": 1, "seed": 0}`` (one level of sections)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            out[str(key)] = value
            continue
        for sub, v in value.items():
            if isinstance(v, dict):
                raise ConfigError(f"{source}: '{key}.{sub}' holds a mapping; parameters nest one level deep "
                                  f"(stage: {{key: value}})")
            out[f"{key}.{sub}"] = v
    return out
