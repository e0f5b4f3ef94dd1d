"""User-facing errors. Each carries the exit code the command line returns for it (see README, "Exit codes")."""

from __future__ import annotations

#: The command's name, as every one-line message starts with it.
PROG = "audioldm2-fast"


class Audioldm2FastError(Exception):
    """Base class: an error whose message is shown to the user as one line, without a traceback."""

    exit_code = 1


class ConfigError(Audioldm2FastError, ValueError):
    """A config value or override is invalid. Raised before any model is loaded."""

    exit_code = 2

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class CheckpointError(Audioldm2FastError):
    """A checkpoint cannot be found, or is not an AudioLDM 2 checkpoint."""

    exit_code = 3


class OutputError(Audioldm2FastError):
    """The output location cannot be written."""

    exit_code = 4


class StageError(Audioldm2FastError):
    """A stage failed while generating."""

    exit_code = 5

    def __init__(self, stage: str, problem: str):
        self.stage = stage
        super().__init__(f"stage {stage}: {problem}")


class ItemsFailedError(Audioldm2FastError):
    """Some items of a run were dropped (non-finite values); the others were written."""

    exit_code = 5


class EnvironmentProblem(Audioldm2FastError):
    """The installed environment cannot run the default settings (``task=doctor`` reports why)."""

    exit_code = 6


class OutOfMemory(Audioldm2FastError):
    """A stage ran out of accelerator memory; the message says where and what to try."""

    exit_code = 7

    def __init__(self, stage: str, device: str, detail: str, hints: str):
        super().__init__(f"stage {stage} ran out of memory on {device} ({detail}); try {hints}")
        self.stage = stage
