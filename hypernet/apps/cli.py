"""python -m hypernet: create, info, convert and check hypernetwork files."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..bounds import brief, check_path
from ..config import CompareOptions, CreateOptions, DemoOptions, field_default
from ..errors import HypernetError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def add_option_flags(parser: argparse.ArgumentParser, cls, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field; defaults stay in the dataclass (flags default to None = not given)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = field_default(f)
        meta = f.metadata
        text = meta.get("help", "")
        choices = meta.get("choices")
        if choices and len(choices) <= 12:
            text += f" [choices: {', '.join(map(str, choices))}]"
        text += f" (default: {_show(default) if default is not None else 'none'})"
        if isinstance(default, bool):
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper(), help=text)


def options_from_args(cls, args: argparse.Namespace, **fixed):
    """Build the dataclass from the flags that were given; the dataclass validates and fills the rest."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    given.update(fixed)
    return cls(**given)


def _existing_folder(path: Path) -> None:
    """HypernetError unless the folder `path` goes into exists: a mistyped folder is never created silently."""
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist; create it first"
        raise HypernetError(f"folder {folder} {what}")


def _refuse_overwrite(output, source, overwrite: bool) -> None:
    """HypernetError naming `output` when it would replace a file other than `source` (the one being continued)."""
    from ..train.run_folder import replaces_other_file
    if not overwrite and replaces_other_file(output, source):
        raise HypernetError(f"{output}: already exists; add --overwrite to replace it, or choose another --output")


def _cmd_create(args) -> int:
    from ..network import from_options
    out = Path(args.output)
    if out.suffix.lower() not in (".pt", ".safetensors"):
        raise HypernetError(f"{out}: output must end in .pt or .safetensors")
    _existing_folder(out)
    if out.exists() and not args.overwrite:
        raise HypernetError(f"{out}: already exists; add --overwrite to replace it")
    fixed = {} if args.name is not None else {"name": out.stem}
    config = options_from_args(CreateOptions, args, **fixed)
    hn = from_options(config, seed=args.seed)
    hn.save(out)
    size = os.path.getsize(out)
    print(f"created {out} ({_size(size)}, {hn.parameter_count():,} parameters, widths {hn.dims})")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def describe(path) -> dict:
    """Everything `info` shows about a file, as plain data."""
    from ..fileformat.compat import summary
    from ..config import base_models
    from ..fileformat.files import load, sha256_file, webui_check, load_optimizer
    hn = load(path)
    digest = sha256_file(path)
    c = hn.config
    info = {
        "file": str(path), "format": "safetensors" if str(path).lower().endswith(".safetensors") else "pt",
        "size_bytes": os.path.getsize(path), "sha256": digest, "shorthash": digest[:10],
        "name": c.name, "dims": hn.dims, "step": hn.step, "parameters": hn.parameter_count(),
        "layer_structure": c.layer_structure, "activation": c.activation, "weight_init": c.weight_init,
        "layer_norm": c.layer_norm, "dropout_structure": c.dropout_structure,
        "activate_output": c.activate_output, "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name, "base_model_by_width": base_models(hn.dims) or None,
        "optional_info": hn.optional_info,
        "readers": hn.readers, "same_math": summary(hn.readers or {}),
    }
    if info["format"] == "pt":
        info["webui_loadable"] = webui_check(path) is None
        try:
            info["has_optimizer_state"] = load_optimizer(path) is not None
        except HypernetError:
            info["has_optimizer_state"] = False
    return info


def _cmd_info(args) -> int:
    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {_show(value) if value is not None else '-'}")
    return 0


def _cmd_convert(args) -> int:
    from ..fileformat.files import load
    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise HypernetError(f"{dst}: input and output are the same file")
    if dst.exists() and not args.overwrite:
        raise HypernetError(f"{dst}: already exists; add --overwrite to replace it")
    hn = load(src)
    hn.save(dst)
    print(f"converted {src} -> {dst} ({_size(os.path.getsize(dst))})")
    return 0


def _cmd_check(args) -> int:
    from ..fileformat.files import load, webui_check
    hn = load(args.file)
    line = f"ok: {args.file} is a safe hypernetwork '{hn.name}' with widths {hn.dims}, step {hn.step}"
    if not str(args.file).lower().endswith(".safetensors"):
        reason = webui_check(args.file)
        line += ("; the webui's restricted loader accepts it" if reason is None else
                 f"; note: the webui's restricted loader would refuse it ({reason}); "
                 f"re-save it with `python -m hypernet convert {args.file} NEW.pt`")
    print(line)
    return 0


def _check_images(options) -> None:
    """HypernetError unless the data folder exists and holds images (before any model loads)."""
    from ..train.data import IMAGE_EXTENSIONS, scan_images
    if not options.data:
        raise HypernetError("--data: give the folder of training images")
    try:
        images, _ = scan_images(options.data, options.recursive)
    except HypernetError as exc:
        raise HypernetError(f"--data: {exc}") from None
    if not images:
        raise HypernetError(f"--data: {options.data} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                            + ("" if options.recursive else "; add --recursive to read sub-folders"))


def _train_plan(args):
    """(TrainOptions, CreateOptions or None when continuing) from the flags, every one checked before a model loads;
    a new file's dims are a stand-in until the model's widths are known."""
    from ..config import TrainOptions
    create_given = [f.name for f in dataclasses.fields(CreateOptions)
                    if f.name != "name" and getattr(args, f.name) is not None]
    if args.hypernetwork and create_given:
        raise HypernetError(f"--hypernetwork continues an existing file; drop the creation flags "
                            f"({', '.join(_flag(n) for n in create_given)}) or train a new one without it")
    options = options_from_args(TrainOptions, args)
    _check_images(options)
    if args.hypernetwork:
        if args.name is not None:
            CreateOptions(name=args.name)  # checks the name
        return options, None
    fixed = {} if args.dims is not None else {"dims": [768]}
    if args.name is None:
        fixed["name"] = Path(options.data).resolve().name or "hypernetwork"
    return options, options_from_args(CreateOptions, args, **fixed)


# The train command's own flags that a run file may also hold, with the values they accept (None: any).
_TRAIN_FLAGS = {"model": None, "model_kind": ("auto", "sd1", "sd2", "sdxl"),
                "prediction_type": ("auto", "epsilon", "v"), "hypernetwork": None, "device": None,
                "dtype": ("fp32", "fp16", "bf16")}


def _train_keys() -> list:
    from ..config import TrainOptions
    return [f.name for cls in (TrainOptions, CreateOptions) for f in dataclasses.fields(cls)] + list(_TRAIN_FLAGS)


def _apply_config(args) -> None:
    """Fill every flag not given on the command line from --config; flags given explicitly win."""
    if args.config:
        from ..train.config_file import read_config
        for key, value in read_config(args.config, _train_keys()).items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    for key, choices in _TRAIN_FLAGS.items():
        value = getattr(args, key)
        if value is not None and (not isinstance(value, str) or (choices and value not in choices)):
            accepted = f"; accepted: {', '.join(choices)}" if choices else ""
            raise HypernetError(f"{key}: unknown value {brief(value)}{accepted}")
        if value is not None and key in ("model", "hypernetwork"):
            check_path(value, key)  # before the model loads: a NUL would fail only after it
    if not args.model:
        raise HypernetError("--model: give the diffusers folder or checkpoint to train on (a flag, or model = ... "
                            "in the --config file)")


def _dump_config(args, options, create) -> int:
    """Write the run's every training option (and the given creation and model flags) to --dump-config."""
    from ..train.config_file import write_config
    values = {key: getattr(args, key) for key in _TRAIN_FLAGS}
    values.update(options.to_dict())
    if create is not None:
        values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(CreateOptions)})
    path = write_config(args.dump_config, values)
    print(f"wrote the options to {path}; train with: python -m hypernet train --config {path}")
    return 0


def _cmd_train(args) -> int:
    from ..train.run_folder import output_path
    _apply_config(args)
    options, create = _train_plan(args)
    if args.dump_config:
        return _dump_config(args, options, create)
    name = create.name if create is not None else args.name
    if name:  # a continued file without --name is named by its contents: checked once it is read
        _refuse_overwrite(output_path(options, name), args.hypernetwork, options.overwrite)
    from ..train import distributed
    device = _train_device(args.device)
    group = distributed.init_from_env(device)
    try:
        return _train_on(args, options, create, name, device, group)
    finally:
        distributed.close()


def _train_device(requested: Optional[str]) -> str:
    """The device flag, defaulting to CUDA when there is one; under torchrun each process takes its LOCAL_RANK's
    GPU."""
    import torch
    from ..train import distributed
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and distributed.launched():
        device = f"cuda:{distributed.local_rank()}"
    return device


def _model_dtype(flag: Optional[str], device: str):
    """The frozen model's dtype for --dtype: as given, else fp32 on CPU and fp16 elsewhere."""
    from ..config import DTYPES
    return DTYPES[flag or ("fp32" if device == "cpu" else "fp16")]


def _train_on(args, options, create, name, device: str, group) -> int:
    from ..hosts.diffusers import DiffusersHost
    from ..train.trainer import Trainer
    from .models import load_pipeline
    dtype = _model_dtype(args.dtype, device)
    pipe = load_pipeline(args.model, dtype=dtype, kind=args.model_kind or "auto",
                         prediction_type=args.prediction_type or "auto")
    _say_what_loaded(pipe)
    host = DiffusersHost(pipe, device=device, dtype=dtype, disposable=True)  # the process ends with the run
    if create is not None and args.dims is None:
        create = create.replace(dims=host.model_dims())
    trainer = Trainer(host, options, args.hypernetwork, create, name=args.name if args.hypernetwork else None,
                      group=group, profile=args.profile)
    if not name:
        _refuse_overwrite(trainer.output, trainer.source_path, options.overwrite)
    result = trainer.run()
    if not group.writer:
        return 0  # process 0 reports for all
    if result.stopped == "already-done":
        print(f"{trainer.name} is already at step {result.step} of {options.steps}; nothing to do")
        return 0
    print(f"{result.stopped} at step {result.step}: {result.output}")
    print(f"run folder: {result.run_dir} (hypernetwork_loss.csv, loss.png, settings.json, "
          f"{len(result.saved)} copies, {len(result.previews)} previews)"
          + (f"; {group.world_size} processes" if group.active else ""))
    if result.overflow_steps:
        print(f"{result.overflow_steps} steps skipped where float16 gradients overflowed (the loss scale came down; "
              "each skipped step drew a new batch)")
    if result.val_losses:
        curve = ", ".join(f"{loss:.5f} at {step}" for step, loss in result.val_losses)
        share = result.validation_seconds / max(result.seconds, 1e-9)
        print(f"validation loss: {curve} (scoring took {share:.1%} of the run)")
    _print_probes(result, options.prompt_kept_goal)
    assert result.timing is not None  # set by every run that returns
    print(result.timing.line())
    if args.profile:
        print(result.timing.table())
        print(f"per-step phases: {result.run_dir}/profile.csv; all figures: summary.json there")
    return 0


def _print_probes(result, goal: float) -> None:
    """The CLI's last lines on prompt kept and style strength: per measure, the suggested copy and the cost."""
    if not result.probes:
        return
    curve = ", ".join(f"{kept:.2f}/{style:.3f} at {step}" for step, kept, style in result.probes)
    share = result.probe_seconds / max(result.seconds, 1e-9)
    print(f"prompt kept/style strength: {curve} (measuring took {share:.1%} of the run)")
    figures = {step: (kept, style) for step, kept, style in result.probes}
    if result.suggested:
        kept, style = figures[result.suggested_step]
        why = f"the strongest style keeping at least {goal:g} of the prompt" if kept >= goal else \
            f"no copy keeps {goal:g} of the prompt; this one keeps most"
        print(f"suggested copy: {result.suggested} (step {result.suggested_step}: prompt kept {kept:.2f}, style "
              f"{style:.3f}; {why})")


def _say_what_loaded(pipe) -> None:
    """One line on how a single file was read (family, prediction and why), so a wrong guess is seen at once."""
    plan = getattr(pipe, "single_file_plan", None)
    if plan:
        prediction = "v-prediction" if plan["prediction_type"] == "v_prediction" else "epsilon"
        print(f"model: {pipe.config._name_or_path} read as {plan['kind'].upper()}, {prediction} ({plan['why']}; "
              "--model-kind / --prediction-type override)")


def _add_model_flags(p) -> None:
    """--model-kind and --prediction-type, shared by train and ui."""
    # default None, not "auto": a --config file may set them, and a flag given here must win over it
    p.add_argument("--model-kind", choices=_TRAIN_FLAGS["model_kind"], default=None,
                   help="single files: the family; auto reads it from the weights' layout (default)")
    p.add_argument("--prediction-type", choices=_TRAIN_FLAGS["prediction_type"], default=None,
                   help="what the model predicts; auto: a folder's scheduler says, a single file's weights "
                        "(SD2: v when a transformer norm's spread says so) (default: auto)")


def _cmd_demo(args) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # diffusers' import chatter is not for newcomers
    from ..tiny.demo import run
    demo = run(options_from_args(DemoOptions, args))
    print(f"hypernetwork: {demo.pt} and {demo.safetensors}")
    print(f"loss log:     {demo.loss_csv} (plot: {demo.loss_png})")
    print(f"comparison:   {demo.grid} (same prompts and seeds: without, strength 0.5, strength 1.0)")
    print(f"style shift: mean distance to the palette {demo.base_distance:.1f} without -> {demo.half_distance:.1f} "
          f"at 0.5 -> {demo.styled_distance:.1f} at 1.0 ({demo.shift:.0%} closer), content kept "
          f"{demo.content_kept:.2f}, over {demo.measure_prompts} unseen prompts, in {demo.seconds:.0f} s")
    if demo.val_loss is not None:
        overflow = f", {demo.overflow_steps} float16 overflow steps skipped" if demo.overflow_steps else ""
        print(f"trained with the frozen model in {demo.dtype}: final validation loss {demo.val_loss:.5f}{overflow}")
    for row in demo.steps or []:
        val = f", validation loss {row['val_loss']:.5f}" if row["val_loss"] is not None else ""
        probe = f", prompt kept {row['prompt_kept']:.2f}, style {row['style']:.3f}" if row["prompt_kept"] is not None \
            else ""
        marks = [m for m, step in (("best trade-off", demo.best_step), ("suggested", demo.suggested_step))
                 if row["step"] == step]
        print(f"  step {row['step']:>5}: shift {row['shift']:.0%}, content kept {row['content_kept']:.2f}{val}{probe}"
              + (f"  <- {', '.join(marks)}" if marks else ""))
    if demo.probe_prompts:
        share = demo.probe_seconds / max(demo.train_seconds, 1e-9)
        print(f"suggested copy (from prompt kept and style strength, no images): step {demo.suggested_step}; "
              f"measuring {demo.probe_prompts} probe prompts took {share:.1%} of the training")
    return 0


def _cmd_compare(args) -> int:
    from ..train import compare
    copies = compare.saved_copies(args.sources)
    settings = compare.settings_of(copies)
    fixed = {"prompt": "\n".join(args.prompt)} if args.prompt else {}
    options = compare.filled(options_from_args(CompareOptions, args, **fixed), settings)
    run = compare.run_dir_of(copies[0].path)
    out = Path(args.out) if args.out else (run or Path(".")) / "compare.png"
    _refuse_overwrite(out, None, args.overwrite)
    from ..hosts.diffusers import DiffusersHost
    from .models import load_pipeline, model_of
    device = _train_device(args.device)
    dtype = _model_dtype(args.dtype, device)
    host = DiffusersHost(load_pipeline(args.model or model_of(settings), dtype=dtype), device=device,
                         dtype=dtype)
    result = compare.render(host, copies, options)
    compare.write_grid(result, out)
    for copy in copies:
        val = f"validation loss {copy.val_loss:.5f}" if copy.val_loss is not None else "no validation loss"
        print(f"{copy.path}: step {copy.step}, {val}")
    print(f"grid: {out} ({len(copies)} rows; columns: "
          f"{', '.join(f'{s:g}' for s in options.strength_list())} for {len(options.prompts())} prompt(s), "
          f"seed {options.seed})")
    return 0


def _cmd_ui(args) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a machine that may be offline
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise HypernetError("the ui needs gradio: pip install -e \".[ui]\" (or pip install gradio)") from None
    from .standalone import serve
    print(f"hypernet ui on http://{args.host}:{args.port} (Ctrl-C stops it)")
    serve(args.model, args.hypernetworks, args.log_dir, host=args.host, port=args.port, open_browser=args.open,
          allow_any_path=args.allow_any_path, kind=args.model_kind or "auto",
          prediction_type=args.prediction_type or "auto",
          allowed_hosts=[n for n in (args.allowed_hosts or "").split(",") if n.strip()], expose=args.expose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hypernet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("create", help="create a new hypernetwork file")
    p.add_argument("output", help="file to write (.pt or .safetensors)")
    add_option_flags(p, CreateOptions)
    p.add_argument("--seed", type=int, default=None, help="seed for the initial weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("info", help="show what a hypernetwork file holds")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert between .pt and .safetensors")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train a hypernetwork on a diffusers model, headless")
    p.add_argument("--config", help="a TOML or JSON file of options (names as below, e.g. learning_rate = "
                                    "\"1e-4\"), or a run folder's settings.json to repeat that run; flags given "
                                    "here override it")
    p.add_argument("--dump-config", metavar="FILE", help="write every option of this command line (and --config) "
                                                         "to FILE (.toml or .json) and exit without training")
    p.add_argument("--model", help="diffusers folder, or a .safetensors/.ckpt checkpoint")
    _add_model_flags(p)
    p.add_argument("--hypernetwork", help="continue training this .pt/.safetensors (with its .optim if present)")
    p.add_argument("--profile", action="store_true",
                   help="print where the time went, phase by phase, and write each step's phases to profile.csv "
                        "in the run folder (every run prints a one-line summary)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="frozen model weights' precision")
    from ..config import TrainOptions
    add_option_flags(p, TrainOptions)
    add_option_flags(p, CreateOptions)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="train a style hypernetwork on the built-in tiny model and show the effect")
    add_option_flags(p, DemoOptions)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("compare", help="render a training run's saved copies side by side in one labelled grid")
    p.add_argument("sources", nargs="+", help="a run folder (holding settings.json) or saved hypernetwork files")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for several (default: the run's preview "
                   "prompt, else its first caption)")
    add_option_flags(p, CompareOptions, skip=("prompt",))
    p.add_argument("--model", help="diffusers folder or checkpoint (default: the model the run's settings.json "
                   "records, e.g. the built-in tiny model for demo runs)")
    p.add_argument("--out", help="PNG to write (default: <run folder>/compare.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="model weights' precision")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("ui", help="serve the Create, Train and Generate tabs in a browser, without a webui")
    p.add_argument("--model", help="diffusers folder or single .safetensors/.ckpt (default: the built-in tiny model)")
    _add_model_flags(p)
    p.add_argument("--hypernetworks", default="models/hypernetworks",
                   help="folder of hypernetwork files (default: models/hypernetworks)")
    p.add_argument("--log-dir", default="logs", help="folder for training runs (default: logs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                   "any other address needs --expose)")
    p.add_argument("--allowed-hosts", default="", metavar="NAMES",
                   help="comma-separated host names the UI also answers to (besides 127.0.0.1, localhost and --host), "
                        "e.g. the machine's LAN name; requests sent to any other name are refused (DNS rebinding)")
    p.add_argument("--expose", action="store_true",
                   help="allow a --host that is not loopback: anyone who can reach it can use the UI, train, and "
                        "read and write the hypernetwork and log folders (there is no login)")
    p.add_argument("--port", type=int, default=7861, help="port (default: 7861)")
    p.add_argument("--open", action="store_true", help="open a browser tab")
    p.add_argument("--allow-any-path", action="store_true",
                   help="let the Train tab write outside --hypernetworks (output) and --log-dir (log and latent "
                        "cache folders)")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("check", help="load a file safely; exit 2 with the reason if it is refused")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..hosts.diffusers import quiet_imports
    quiet_imports()
    try:
        return args.func(args)
    except HypernetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
