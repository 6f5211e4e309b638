"""The kit's own exception types: a user's mistake, told apart from a bug.

Every check the kit makes on what a user gave it (a config value, a data file, a prompt, a
checkpoint) raises a `PicoLLMError`, whose message names the value, the file and the fix. The
command line prints that message in a line or two and exits non-zero; any other exception is a
bug and keeps its traceback. Each type also derives from the built-in error a caller would
catch without knowing the kit (ValueError, FileNotFoundError, RuntimeError).
"""

from __future__ import annotations


class PicoLLMError(ValueError):
    """Bad input to the kit: the message says what was wrong and how to fix it."""


class ConfigError(PicoLLMError):
    """A RunConfig value that is out of range or of the wrong type."""


class DataError(PicoLLMError):
    """A data file or corpus that cannot be trained on (unreadable, malformed, empty)."""


class MissingFileError(PicoLLMError, FileNotFoundError):
    """A file the user named (data, checkpoint, run logs) does not exist."""


class CheckpointError(PicoLLMError):
    """A checkpoint that is empty, truncated, foreign, or does not match the run resuming it."""


class PromptError(PicoLLMError):
    """A prompt the model cannot start from (empty, or only tokens the vocabulary lacks)."""


class TrainingDivergedError(PicoLLMError, RuntimeError):
    """The loss (or gradient norm) became NaN or infinite."""


class VocabularyError(PicoLLMError):
    """A tokenizer whose vocabulary is not the one the model was trained with (their ids differ)."""


class TokenizerError(PicoLLMError, RuntimeError):
    """GPT-2's ranks file cannot be had: not cached, failed its checksum, and no source reachable."""


class RunLogError(PicoLLMError):
    """A run's log file (loss_logs.json, generation_logs.json) that is truncated or not the kit's."""


class DiskFullError(PicoLLMError, OSError):
    """The disk filled up while a file was written; the file's previous version is kept."""


class DigestError(CheckpointError):
    """A checkpoint (or model-cache entry) whose contents fail their digest: changed after it was written."""
