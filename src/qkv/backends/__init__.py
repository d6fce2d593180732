"""Attention backends: one signature, ``supports(inputs) -> reasons``, explicit choice or auto."""

from .base import AttentionInputs, Backend, BackendNotSupportedError, Capabilities
from .blocksparse import BlockSparseBackend
from .chunked import ChunkedBackend
from .dispatch import BACKENDS, PRIORITY, DispatchReport, choose, get_backend
from .flex import FlexBackend
from .memory import MemoryPlanError
from .reference import ReferenceBackend
from .ring import RingBackend, RingCommunicationError
from .sdpa import SdpaBackend

__all__ = [
    "BACKENDS",
    "PRIORITY",
    "AttentionInputs",
    "Backend",
    "BackendNotSupportedError",
    "BlockSparseBackend",
    "Capabilities",
    "ChunkedBackend",
    "DispatchReport",
    "FlexBackend",
    "MemoryPlanError",
    "ReferenceBackend",
    "RingBackend",
    "RingCommunicationError",
    "SdpaBackend",
    "choose",
    "get_backend",
]
