"""Ring attention on 2 processes: each holds half of a sequence, the result is one process's.

python docs/examples/ring_attention.py                        # spawns 2 processes (gloo)
torchrun --nproc_per_node 2 docs/examples/ring_attention.py   # the same under torchrun
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qkv
import qkv.distributed as qd


def demo():
    """Run on every rank of the default process group; rank 0 prints the comparison."""
    torch.manual_seed(0)  # the same full sequence on every rank, for the comparison
    q, k, v = (torch.randn(1, 4, 64, 16, dtype=torch.float64) for _ in range(3))
    causal = qkv.masks.causal()  # in global coordinates
    mine = [qd.shard_sequence(t, layout="zigzag") for t in (q, k, v)]  # (1, 4, 64 / world, 16)
    with qd.context_parallel(layout="zigzag") as sp:
        out = qkv.attention(*mine, mask=causal).out  # auto runs the ring here
    full = qd.gather_sequence(out, layout="zigzag")
    one_process = qkv.attention(q, k, v, mask=causal, backend="reference").out
    if dist.get_rank() == 0:
        exact = bool((full - one_process).abs().max() < 1e-12)
        print(f"world {dist.get_world_size()}: equal to one process: {exact}; "
              f"rank 0 received {sp.stats.forward_recvs} K/V block(s)")  # fmt: skip


def main(rank=None, world=None, rendezvous=None):
    if rendezvous:  # spawned below
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    else:  # under torchrun: its environment says where the others are
        dist.init_process_group("gloo")
    demo()
    dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:
        main()
    else:
        with tempfile.TemporaryDirectory() as d:
            mp.spawn(main, args=(2, f"file://{d}/rendezvous"), nprocs=2)
