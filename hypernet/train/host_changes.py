"""What a run changes on its host for training (options, frozen modules, freed encoders, checkpointing), and how
it puts the host back afterwards."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from ..config import TrainOptions
from ..errors import HypernetError
from ..network import Hypernetwork

if TYPE_CHECKING:
    from ..hosts.protocol import Host, SwapsVae

log = logging.getLogger("hypernet")


class HostChanges:
    """One run's changes to `host`, each recorded so that undo() and finish() put it back."""

    def __init__(self, host: Host, options: TrainOptions):
        self.host = host
        self.opts = options
        self._restore: dict = {}   # host attributes the options changed, with their values before
        self._released = None      # brings back what release() freed (the text encoder, the VAE)

    def check(self, hn: Hypernetwork) -> None:
        """Refuse a hypernetwork whose widths this model's attention does not read, or a host whose current mode
        cannot train, before any work."""
        report = hn.compatibility(self.host.unet)
        if not report.applies:
            raise HypernetError(f"hypernetwork {hn.name!r} has widths {report.dims}, but this model's attention "
                                f"reads {report.model_cross_dims + report.model_self_dims}; create it with "
                                f"--dims {','.join(map(str, self.host.model_dims()))}")
        if report.warning:
            log.warning(report.warning)
        if hasattr(self.host, "check_trainable"):
            self.host.check_trainable()

    def apply(self) -> None:
        """Apply the options that change the host (clip skip, VAE) and freeze the model."""
        o = self.opts
        if o.clip_skip:
            if not hasattr(self.host, "clip_skip"):
                raise HypernetError(f"clip_skip: {type(self.host).__name__} cannot skip text encoder layers; "
                                    "leave it at 0")
            self._restore.setdefault("clip_skip", self.host.clip_skip)
            self.host.clip_skip = o.clip_skip
        if o.vae:
            if not hasattr(self.host, "use_vae"):
                raise HypernetError(f"vae: {type(self.host).__name__} takes its VAE from its own settings (in the "
                                    "webui: SD VAE); leave this empty")
            self._restore["vae"] = self.host.use_vae(o.vae)
        for module in self.host.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def release(self, text: bool) -> None:
        """Free the VAE (every latent is encoded) and, with `text`, the text encoder (every prompt is), where the
        host can: it moves them off the GPU, or drops them from a pipeline that is this run's alone."""
        release = getattr(self.host, "release", None)
        if release is not None:
            self._released = release(vae=True, text=text)

    def checkpoint(self) -> None:
        """Gradient checkpointing on, when the options ask and the host has it."""
        if self.opts.gradient_checkpointing and hasattr(self.host, "enable_gradient_checkpointing"):
            self.host.enable_gradient_checkpointing()

    def undo(self) -> None:
        """The freed models back and the options' changes undone (all a failed setup needs)."""
        if self._released is not None:
            self._released()
            self._released = None
        for name, value in self._restore.items():
            if name == "vae":
                cast("SwapsVae", self.host).use_vae(value)  # only set when the host has use_vae
            else:
                setattr(self.host, name, value)
        self._restore = {}

    def finish(self) -> None:
        """undo(), then checkpointing off and the host's own close (a host that changed the model undoes it)."""
        self.undo()
        if self.opts.gradient_checkpointing and hasattr(self.host, "disable_gradient_checkpointing"):
            self.host.disable_gradient_checkpointing()
        if hasattr(self.host, "close"):
            self.host.close()
