"""The child side of ``LocalGPUsLauncher``: run one Hydra job from its pickled config and pickle its result."""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.types import HydraContext


def _picklable(ret: JobReturn) -> JobReturn:
    """An exception that cannot make the round trip through pickle is passed on as a RuntimeError with its text."""
    value = ret._return_value
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        ret._return_value = RuntimeError(f"{type(value).__name__}: {value}")
    return ret


def main(payload_path: str) -> None:
    from hydra._internal.callbacks import Callbacks

    payload_file = Path(payload_path)
    with open(payload_file, "rb") as fh:
        payload = pickle.load(fh)
    Singleton._instances.update(payload["singletons"])
    setup_globals()
    module, qualname = payload["task"]
    task_function = importlib.import_module(module)
    for part in qualname.split("."):
        task_function = getattr(task_function, part)
    task_function = getattr(task_function, "__wrapped__", task_function)  # the undecorated @hydra.main function
    config = payload["config"]
    context = HydraContext(config_loader=None, callbacks=Callbacks(config))
    ret = run_job(
        hydra_context=context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    tmp = payload_file.with_suffix(".ret.part")
    with open(tmp, "wb") as fh:
        pickle.dump(_picklable(ret), fh)
    tmp.replace(payload_file.with_suffix(".ret"))


if __name__ == "__main__":
    main(sys.argv[1])
