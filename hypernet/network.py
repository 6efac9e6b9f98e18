"""The hypernetwork itself: per-width residual MLPs with the webui's exact layout and math."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .config import ACTIVATIONS, CreateOptions
from .errors import ConfigError, HypernetError


def _bare_linear(n_in: int, n_out: int, device) -> nn.Linear:
    """An nn.Linear whose weights are left unset (torch.empty): for a loader that assigns every value.

    nn.Linear's own constructor always runs its random init, which costs more than the rest of a load's layout
    even on the meta device.
    """
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = n_in, n_out
    layer.weight = nn.Parameter(torch.empty(n_out, n_in, device=device))
    layer.bias = nn.Parameter(torch.empty(n_out, device=device))
    return layer


class HypernetworkModule(nn.Module):
    """x + mlp(x) * strength, with the mlp laid out module by module as the webui lays it out."""

    def __init__(self, dim: int, config: CreateOptions, *, device=None, init: bool = True):
        super().__init__()
        self.dim = int(dim)
        widths = config.widths(self.dim)
        if min(widths) < 1:
            raise ConfigError("layer_structure", f"width {dim} times {config.layer_structure} gives a layer of "
                                                 f"{min(widths)} units; use larger multipliers")
        layers: list = []
        dropout = config.dropout_structure or ()  # filled by CreateOptions.__post_init__, never None here
        last = len(widths) - 2
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1], device=device) if init
                          else _bare_linear(widths[i], widths[i + 1], device))
            if config.activation != "linear" and (i < last or config.activate_output):
                layers.append(ACTIVATIONS[config.activation]())
            if config.layer_norm:
                layers.append(nn.LayerNorm(widths[i + 1], device=device))
            if dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=dropout[i + 1]))
        self.linear = nn.Sequential(*layers)
        if init:
            self._init_weights(config)

    @torch.no_grad()
    def _init_weights(self, config: CreateOptions) -> None:
        # Quirks kept on purpose: LayerNorm gets the Normal init (gamma ~ N(0, 0.01), not 1), and Kaiming
        # uses leaky_relu gain only for leakyrelu, because files made here must behave like the webui's.
        gain = "leaky_relu" if config.activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if type(layer) not in (nn.Linear, nn.LayerNorm):
                continue
            weight, bias = layer.weight, layer.bias
            if config.weight_init == "Normal" or type(layer) is nn.LayerNorm:
                nn.init.normal_(weight, mean=0.0, std=0.01)
                nn.init.zeros_(bias)
            elif config.weight_init == "XavierUniform":
                nn.init.xavier_uniform_(weight)
                nn.init.zeros_(bias)
            elif config.weight_init == "XavierNormal":
                nn.init.xavier_normal_(weight)
                nn.init.zeros_(bias)
            elif config.weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(weight, nonlinearity=gain)
                nn.init.zeros_(bias)
            else:
                nn.init.kaiming_normal_(weight, nonlinearity=gain)
                nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * strength


class Hypernetwork(nn.Module):
    """A set of (k, v) module pairs keyed by context width, plus the webui's metadata."""

    def __init__(self, config: Optional[CreateOptions] = None, *, step: int = 0,
                 sd_checkpoint: Optional[str] = None, sd_checkpoint_name: Optional[str] = None,
                 optional_info: Optional[str] = None, device=None, init: bool = True):
        """`device="meta", init=False` builds the layout alone, for a loader that assigns every weight."""
        super().__init__()
        self.config = config if config is not None else CreateOptions()
        self.step = int(step)
        self.sd_checkpoint = sd_checkpoint
        self.sd_checkpoint_name = sd_checkpoint_name
        self.optional_info = optional_info
        self.filename: Optional[str] = None
        self.readers: Optional[dict] = None   # set by files.load/inspect: which other loaders read the file identically
        self.optimizer_name: Optional[str] = None
        self.optimizer_state_dict: Optional[dict] = None
        self.optimizer_extra: dict = {}
        self.layers = nn.ModuleDict({
            str(dim): nn.ModuleList([HypernetworkModule(dim, self.config, device=device, init=init) for _ in "kv"])
            for dim in self.config.dims
        })
        self.eval()
        self.requires_grad_(False)

    @property
    def name(self) -> str:
        return self.config.name

    @name.setter
    def name(self, value: str) -> None:
        self.config = self.config.replace(name=value)

    @property
    def dims(self) -> List[int]:
        return sorted(int(d) for d in self.layers.keys())

    def modules_for(self, dim: int):
        """The (k, v) modules for one context width; KeyError if this hypernetwork lacks it."""
        pair = self.layers[str(int(dim))]
        return pair[0], pair[1]

    def has_dim(self, dim: int) -> bool:
        return str(int(dim)) in self.layers

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def transform(self, context: torch.Tensor, strength: float = 1.0):
        """(k_context, v_context) for one context tensor; widths this hypernetwork lacks pass through."""
        return transform([(self, strength)], context)

    def compatibility(self, unet: nn.Module):
        from .attach import compatibility
        return compatibility(self, unet)

    def save(self, path, **kwargs) -> str:
        from .fileformat.files import save
        return save(self, path, **kwargs)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.parameters())

    def __repr__(self) -> str:
        c = self.config
        return (f"Hypernetwork(name={c.name!r}, dims={self.dims}, layer_structure={c.layer_structure}, "
                f"activation={c.activation!r}, layer_norm={c.layer_norm}, step={self.step})")


def _strength_pair(strength) -> tuple:
    """(self-attention strength, cross-attention strength) from a number or {'self': a, 'cross': b}."""
    if isinstance(strength, dict):
        unknown = set(strength) - {"self", "cross", "all"}
        if unknown:
            raise HypernetError(f"strength: unknown key(s) {sorted(unknown)}; use 'self', 'cross' or 'all'")
        base = float(strength.get("all", 1.0))
        return float(strength.get("self", base)), float(strength.get("cross", base))
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise HypernetError(f"strength: expected a number, got {strength!r}")
    return float(strength), float(strength)


def apply_chain(stack: Iterable, context: torch.Tensor, which: int, cross: Optional[bool] = None) -> torch.Tensor:
    """Run context through the k (which=0) or v (which=1) modules of each hypernetwork in order."""
    out = context
    for hn, strength in stack:
        key = str(out.shape[-1])
        if key not in hn.layers:
            continue
        self_s, cross_s = _strength_pair(strength)
        s = cross_s if cross else self_s
        module = hn.layers[key][which]
        param = next(module.parameters())
        if param.device != out.device:
            hn.to(out.device)
        result = module(out.to(param.dtype), s)
        out = result.to(context.dtype)
    return out


def transform(stack, context: torch.Tensor):
    """The webui's reference math: (k, v) contexts after every hypernetwork in the stack, in order."""
    return apply_chain(stack, context, 0), apply_chain(stack, context, 1)


def create(dims: Sequence[int] = (768, 320, 640, 1280), layer_structure: Sequence[float] = (1, 2, 1),
           activation: str = "relu", weight_init: str = "Normal", layer_norm: bool = False,
           dropout_structure: Optional[Sequence[float]] = None, activate_output: bool = False,
           name: str = "hypernetwork", *, seed: Optional[int] = None) -> Hypernetwork:
    """A new hypernetwork initialised as the webui would; `seed` makes the initial weights reproducible."""
    # CreateOptions also parses the strings and single numbers the UIs pass
    shape: Dict[str, Any] = dict(
        dims=dims if isinstance(dims, (str, int)) else list(dims),
        layer_structure=layer_structure if isinstance(layer_structure, str) else list(layer_structure),
        dropout_structure=dropout_structure)
    config = CreateOptions(name=name, activation=activation, weight_init=weight_init, layer_norm=layer_norm,
                           activate_output=activate_output, **shape)
    return from_options(config, seed=seed)


def from_options(config: CreateOptions, *, seed: Optional[int] = None) -> Hypernetwork:
    """A new hypernetwork for a validated CreateOptions."""
    if seed is None:
        return Hypernetwork(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Hypernetwork(config)
