"""A Transformer translator and BERT on 2 processes: each holds half of every sequence, the
results are one process's.

python docs/examples/sharded_models.py                        # spawns 2 processes (gloo)
torchrun --nproc_per_node 2 docs/examples/sharded_models.py   # the same under torchrun
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qkv.distributed as qd
from qkv.models import BertConfig, BertModel
from qkv.models.transformer import Transformer, TransformerConfig


def translator_rows(layout="zigzag"):
    """``(this rank's logits, the whole logits of one process)`` of a causal decoder over a
    padded source, sharded in ``layout``."""
    torch.manual_seed(0)  # the same model and batch on every rank
    cfg = TransformerConfig(
        src_vocab=20, tgt_vocab=20, d_model=32, num_heads=4, dropout=0.0, positional="rope"
    )
    model = Transformer(cfg).double().eval()
    src, tgt = torch.randint(4, 20, (2, 12)), torch.randint(4, 20, (2, 24))
    src_lengths = torch.tensor([12, 7])  # the whole sequences' lengths (sample 1 is padded)
    with qd.context_parallel(layout=layout):
        mine = model(qd.shard_sequence(src, dim=1, layout=layout), src_lengths,
                     qd.shard_sequence(tgt, dim=1, layout=layout))  # (2, 24 / world, 20)  # fmt: skip
    return mine, model(src, src_lengths, tgt)


def bert_rows(layout="contiguous"):
    """``(this rank's last hidden states, the whole states of one process)``, padding included."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model = BertModel(cfg).double().eval()
    ids, mask = torch.randint(4, 30, (2, 24)), torch.ones(2, 24, dtype=torch.long)
    mask[1, 15:] = 0  # sample 1: its last 9 tokens are padding
    with qd.context_parallel(layout=layout):
        out = model(
            qd.shard_sequence(ids, dim=1, layout=layout), qd.shard_sequence(mask, dim=1, layout=layout)
        )
    return out.last_hidden_state, model(ids, mask).last_hidden_state


def demo():
    """Run on every rank of the default process group; rank 0 prints the comparison."""
    equal = []
    for rows, layout in ((translator_rows, "zigzag"), (bert_rows, "contiguous")):
        mine, one_process = rows(layout)
        whole = qd.gather_sequence(mine.detach(), dim=1, layout=layout)  # only to compare
        equal.append(bool((whole - one_process).abs().max() < 1e-12))
    if dist.get_rank() == 0:
        print(f"world {dist.get_world_size()}: translator equal to one process: {equal[0]}; BERT: {equal[1]}")


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
