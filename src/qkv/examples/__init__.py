"""Worked examples that train a tiny model in seconds (imported by name, never by ``import qkv``).

- :mod:`qkv.examples.adding`: the adding problem, the sequence regression of the article's
  attention pooling layer: its layer as written (softmax only at inference), the fixed layer
  and mean pooling, trained on the same data (``qkv demo --examples``).
"""
