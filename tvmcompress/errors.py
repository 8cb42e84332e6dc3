"""Exceptions raised for user errors; each message names the bad thing and the fix."""

import tvm_ffi


class TvmCompressError(Exception):
    """Base class of every error tvmcompress raises on purpose."""


class ConfigError(TvmCompressError, ValueError):
    """A config field or argument has a value outside its allowed range."""


class UnsupportedModelError(TvmCompressError, ValueError):
    """The model uses something tvmcompress (or TVM's importer) cannot compile."""


class InputError(TvmCompressError, ValueError):
    """Inputs given to run/benchmark/compile do not match the model's signature."""


class TargetError(TvmCompressError, ValueError):
    """Unknown target preset, bad target dict, or a missing toolchain."""


class ExportError(TvmCompressError, RuntimeError):
    """Writing or loading an exported module failed."""


# Errors raised inside passes cross TVM's FFI; registered, they come back as themselves.
for _error in (ConfigError, UnsupportedModelError, InputError, TargetError, ExportError):
    tvm_ffi.register_error(_error)
