"""Compression configs: one frozen dataclass per pass, composed by ``CompressConfig``.

Passes register their config type with :func:`register_pass`; ``CompressConfig.from_dict``
resolves types only through that registry, so a JSON config can name nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from tvmcompress.errors import ConfigError

CONFIG_VERSION = 1
PASS_REGISTRY: dict[str, tuple[type[PassConfig], Callable[..., Any]]] = {}


@dataclasses.dataclass(frozen=True)
class PassConfig:
    """Base class of every pass config; subclasses validate in ``__post_init__``."""

    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "version": self.version,
                "data": dataclasses.asdict(self)}


def register_pass(config_type: type[PassConfig]) -> Callable:
    """Register ``factory(config) -> tvm.transform.Pass`` as the pass for ``config_type``."""

    def wrap(factory: Callable) -> Callable:
        name = config_type.__name__
        if name in PASS_REGISTRY:
            raise ConfigError(f"{name} is registered twice (by {PASS_REGISTRY[name][1]} and "
                              f"{factory})")
        PASS_REGISTRY[name] = (config_type, factory)
        return factory

    return wrap


def pass_config_from_dict(data: dict[str, Any]) -> PassConfig:
    name = data.get("type")
    if name not in PASS_REGISTRY:
        raise ConfigError(f"Unknown pass config type {name!r}; known: {sorted(PASS_REGISTRY)}")
    config_type = PASS_REGISTRY[name][0]
    if data.get("version") != config_type.version:
        raise ConfigError(f"{name} version {data.get('version')} is not supported; this "
                          f"tvmcompress reads version {config_type.version}")
    try:
        return config_type(**data.get("data", {}))
    except TypeError as err:
        raise ConfigError(f"{name}: {err}") from err


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """The compression pipeline: ``passes`` run in list order, with no hidden reordering."""

    passes: tuple[PassConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "passes", tuple(self.passes))
        for i, p in enumerate(self.passes):
            if not isinstance(p, PassConfig):
                raise ConfigError(f"CompressConfig.passes[{i}] must be a pass config "
                                  f"(e.g. tc.QuantizeConfig(...)), got {type(p).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "CompressConfig", "version": CONFIG_VERSION,
                "data": {"passes": [p.to_dict() for p in self.passes]}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressConfig:
        if data.get("type") != "CompressConfig" or data.get("version") != CONFIG_VERSION:
            raise ConfigError(f"Not a CompressConfig version {CONFIG_VERSION} dict: "
                              f"type={data.get('type')!r}, version={data.get('version')!r}")
        return cls(tuple(pass_config_from_dict(p) for p in data.get("data", {}).get("passes", [])))
