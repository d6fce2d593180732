"""Toy utterances for the speech model tests: three words, each a block of frames lit in its own bands."""

import torch

WORDS = ("one", "two", "three")


def word_utterances(n: int, seed: int) -> tuple[list[torch.Tensor], list[str]]:
    """Each word is 6 frames lit in its own two of 8 bands (with noise); 1-3 words per utterance."""
    g = torch.Generator().manual_seed(seed)
    feats, texts = [], []
    for _ in range(n):
        words = torch.randint(0, 3, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        frames = []
        for w in words:
            block = 0.3 * torch.randn(6, 8, generator=g)
            block[:, 2 * w : 2 * w + 2] += 2.0
            frames.append(block)
        feats.append(torch.cat(frames))
        texts.append(" ".join(WORDS[w] for w in words))
    return feats, texts
