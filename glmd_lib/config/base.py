"""Typed, validated experiment configs: one dataclass per notebook, one config = one experiment.

Each notebook's single ``parameters`` cell holds exactly the fields of its config class, all ``None``
by default, which means "take the profile's value". The next cell calls
``Cfg.from_namespace(globals())``: it applies the profile (``smoke``, ``demo``, ``full``), then the
explicit values, and validates everything *before* any work starts. Unknown keys and wrong types
raise :class:`ConfigError` naming the key.

Profiles:
  smoke  tiny random models built from configs with the real teacher tokenizer; seconds per notebook (CI)
  demo   the real teacher (SmolLM2-135M-Instruct); the whole pipeline in about 30 minutes on 2 CPU cores
  full   the paper's settings, meant for a GPU
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from glmd_lib.artifacts import REPO_ROOT, atomic_write_json, provenance, stage_dir

PROFILES = ("smoke", "demo", "full")
DEFAULT_PROFILE = "demo"


class ConfigError(ValueError):
    """A parameter is unknown, has the wrong type or an invalid value."""


def param(default: Any, help: str, **extra: Any) -> Any:
    """A config field with help text (shown in the notebook and in ``glmd params``)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


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
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


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
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        # try the exact type first so that 3 stays an int in `int | float`
        for arg in sorted(args, key=lambda a: 0 if isinstance(value, a if isinstance(a, type) else ()) else 1):
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"parameter {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return [_coerce(f"{key}[{i}]", v, arg) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"parameter {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


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
                                      "(default: $GLMD_RUN_DIR, else runs/<profile> in the repository)")
    profile: Literal["smoke", "demo", "full"] | None = param(
        None, "smoke (tiny random models, CI) | demo (real teacher, ~30 min on 2 cores) | full (paper, GPU); "
              "default: $GLMD_PROFILE, else demo")
    seed: int = param(0, "random seed for everything this stage draws")
    device: str = param("auto", "auto (CUDA > MPS > CPU) or an explicit torch device such as cpu or cuda:0")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

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
        values: dict[str, Any] = dict(cls.profiles.get(profile, {}))
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
        """Value checks beyond types; subclasses extend (and call super)."""
        if self.seed < 0:
            raise ConfigError("parameter 'seed' must be >= 0")

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
# data locations
# --------------------------------------------------------------------------------------------

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def resolve_superglue_dir(explicit: str | Path | None = None) -> Path:
    """Explicit parameter, then ``$GLMD_DATA``, then ``../shared/data/superglue``, then ``data/superglue``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("GLMD_DATA"):
        return Path(os.environ["GLMD_DATA"]).expanduser()
    for cand in (SHARED_DATA / "superglue", Path.cwd().parent / "shared" / "data" / "superglue"):
        if cand.exists():
            return cand
    return REPO_ROOT / "data" / "superglue"


def resolve_corpus_dir(explicit: str | Path | None = None) -> Path:
    """Explicit parameter, then ``$GLMD_CORPUS``, then ``../shared/data/corpus/gutenberg``, then ``data/corpus``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("GLMD_CORPUS"):
        return Path(os.environ["GLMD_CORPUS"]).expanduser()
    for cand in (SHARED_DATA / "corpus" / "gutenberg", Path.cwd().parent / "shared" / "data" / "corpus" / "gutenberg"):
        if cand.exists():
            return cand
    return REPO_ROOT / "data" / "corpus"
