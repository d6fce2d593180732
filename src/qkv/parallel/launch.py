"""``qkv train --nproc N``: ``N`` processes of ``python -m qkv ...`` on this machine, started and
watched by torchrun's elastic agent (``torch.distributed.run``), exactly as ``torchrun
--standalone --nproc_per_node N -m qkv ...`` would."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._checks import check_int

__all__ = ["launch"]


def launch(argv: Sequence[str], *, nproc: int) -> int:
    """Run ``python -m qkv *argv`` in ``nproc`` processes (a standalone rendezvous on a free
    local port, no restarts) and wait for them; each process reads its rank from the
    environment torchrun sets. Returns 0, or the exit code of the first failed process (143
    when it stopped on SIGTERM). SIGINT or SIGTERM to this process reaches every rank through
    the agent (each saves its run and stops); the return code is then ``128 + signal``."""
    check_int("nproc", nproc, 1)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets (with a banner); threads: [train]
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc_per_node", str(nproc), "--max_restarts", "0", "-m", "qkv", *argv]
    )
    try:
        run(args)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        code = first.exitcode
        return 128 - code if code < 0 else code  # a rank killed by a signal: 128 + the signal
    return 0
