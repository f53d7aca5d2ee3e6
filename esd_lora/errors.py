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


class InvalidRepoIdError(EsdLoraError, ValueError):
    """A Hub repository id (or revision) is malformed or uses path tricks; refused before any request."""


class HubError(EsdLoraError, OSError):
    """A Hugging Face Hub request failed (the subclasses say why)."""


class HubAuthError(HubError, PermissionError):
    """The Hub rejected the token (HTTP 401)."""


class HubPermissionError(HubError, PermissionError):
    """The token is valid but may not do this (HTTP 403), or the repo is gated."""


class HubNotFoundError(HubError, FileNotFoundError):
    """The repository, revision or file does not exist on the Hub (or is private)."""


class HubServerError(HubError):
    """The Hub answered with a server error (HTTP 5xx): retrying later may work."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub cannot be reached (connection refused, timeout, DNS)."""


class HubOfflineError(HubError, FileNotFoundError):
    """HF_HUB_OFFLINE is set and what was asked for is not in the local Hub cache."""


class HubIntegrityError(CorruptAdapterError):
    """A downloaded file does not match the hash the Hub advertises for it; it was removed from the cache."""


class CatalogError(EsdLoraError, ValueError):
    """The adapter catalog (adapters/index.json) is missing, malformed or does not match its files."""


class MissingDependencyError(EsdLoraError, ImportError):
    """An optional extra (the web app's gradio, say) is not installed."""


class TrainerBusyError(EsdLoraError, RuntimeError):
    """A training is already running in this process; the web app runs one at a time."""


class TrainingCancelledError(EsdLoraError, RuntimeError):
    """A training was cancelled before it finished; nothing was written."""


class UnsupportedAttackError(UnsupportedPipelineError):
    """An attack (or adversarial erasure) needs what this pipeline does not offer (soft prompts: SD 1.x/2.x)."""


class ConceptsFileNotFoundError(EsdLoraError, FileNotFoundError):
    """The concepts file given to erase-many does not exist."""


class ConceptsFileError(ConfigError):
    """The concepts file given to erase-many names no concept, or names the same adapter twice."""
