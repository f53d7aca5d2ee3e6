"""Every error esd-lora raises on purpose.

Each class subclasses both :class:`EsdLoraError` (so callers and the CLI can catch everything of ours in one
place) and the closest built-in exception (so ``except FileNotFoundError`` keeps working). Every message is one
line that says what went wrong and what to do next; the CLI prints it as ``error: <message>`` and exits 1.
"""

from __future__ import annotations


class EsdLoraError(Exception):
    """Base class of every esd-lora error."""


class ConfigError(EsdLoraError, ValueError):
    """An option has a value that cannot work (negative iterations, a rank of 0, ...)."""


class EmptyConceptError(ConfigError):
    """A concept is empty or only whitespace."""


class UnknownMethodError(ConfigError):
    """The erasure method is not one of the known methods."""


class BaseModelNotFoundError(EsdLoraError, FileNotFoundError):
    """The base model path does not exist, or the Hub id cannot be fetched."""


class NotAPipelineError(EsdLoraError, ValueError):
    """The base model path exists but is not a diffusers pipeline folder."""


class UnsupportedPipelineError(EsdLoraError, TypeError):
    """The base model is a diffusers pipeline of a class esd-lora does not train."""


class NonFiniteLossError(EsdLoraError, FloatingPointError):
    """The training loss became NaN or infinite; nothing was written."""


class OutputExistsError(EsdLoraError, FileExistsError):
    """The output path already exists and overwriting was not asked for."""


class OutputNotWritableError(EsdLoraError, PermissionError):
    """The output path cannot be written (missing folder, no permission)."""


class AdapterNotFoundError(EsdLoraError, FileNotFoundError):
    """The adapter file does not exist."""


class CorruptAdapterError(EsdLoraError, ValueError):
    """The adapter file is truncated or is not a readable safetensors file."""


class NotAnEsdAdapterError(EsdLoraError, ValueError):
    """The file is a valid safetensors file but carries no esd-lora metadata."""


class AdapterBaseMismatchError(EsdLoraError, ValueError):
    """The adapter was trained on another base model (its fingerprint differs)."""


class AdapterShapeMismatchError(EsdLoraError, ValueError):
    """The adapter's tensors do not fit the base model's modules (another architecture)."""


class SingleFileExportError(EsdLoraError, ValueError):
    """The pipeline cannot be written as an original-layout single-file checkpoint."""
