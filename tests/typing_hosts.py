"""Checked by mypy, never run: every host, and the tests' stand-ins, satisfy the host contract (hosts/protocol.py).

Each function assigns a host to the protocols it claims; mypy fails here when a host loses a member, renames one
or changes a signature so that the trainer's calls would no longer fit. pytest does not collect this file (its name
does not start with test_), and running it would do nothing.
"""
from __future__ import annotations

from hypernet.hosts.diffusers import DiffusersHost
from hypernet.hosts.protocol import (Checkpointing, ChecksTrainable, Closing, HasPrecision, Host, Releasing,
                                     SkipsClip, SwapsVae)
from hypernet.hosts.webui import ForgeHost, WebuiHost
from test_timing import CountingHost


def diffusers(h: DiffusersHost) -> None:
    host: Host = h
    optional: list[object] = [_checkpointing(h), _skips_clip(h), _swaps_vae(h), _releasing(h)]
    del host, optional


def webui(h: WebuiHost) -> None:
    host: Host = h
    optional: list[object] = [_checkpointing(h), _skips_clip(h), _precision(h), _checks_trainable(h)]
    del host, optional


def forge(h: ForgeHost) -> None:
    host: Host = h
    optional: list[object] = [_checkpointing(h), _skips_clip(h), _precision(h), _checks_trainable(h), _closing(h)]
    del host, optional


def counting(h: CountingHost) -> None:
    """tests/test_timing.py's host that counts text encodings."""
    host: Host = h
    optional: list[object] = [_checkpointing(h), _skips_clip(h), _swaps_vae(h), _releasing(h)]
    del host, optional


# one per optional protocol, so that mypy names the protocol and the member a host lacks
def _checkpointing(h: Checkpointing) -> object: return h
def _skips_clip(h: SkipsClip) -> object: return h
def _swaps_vae(h: SwapsVae) -> object: return h
def _releasing(h: Releasing) -> object: return h
def _precision(h: HasPrecision) -> object: return h
def _checks_trainable(h: ChecksTrainable) -> object: return h
def _closing(h: Closing) -> object: return h
