"""What every application (:mod:`qkv.translation`, :mod:`qkv.vision`) is made of above the
model-agnostic trainer (:mod:`qkv.train`): its run config (:class:`RunConfig`: ``[data]``,
``[model]``, ``[train]``, resolved from defaults, a preset, a TOML file and dotted overrides),
its ``train(cfg, out, **options)`` (:func:`fit_run`) and the loader of its trained model
(:func:`load_trained`)."""

from .run import fit_run, load_trained, open_run, seed_everything, torch_threads
from .run_config import SAFE_ON_RESUME, RunConfig, from_table, load_toml, parse_override

__all__ = [
    "SAFE_ON_RESUME",
    "RunConfig",
    "fit_run",
    "from_table",
    "load_toml",
    "load_trained",
    "open_run",
    "parse_override",
    "seed_everything",
    "torch_threads",
]
