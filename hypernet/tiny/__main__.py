"""python -m hypernet.tiny: build the tiny model, or draw with it."""
from __future__ import annotations

from .build import build, sample
from .model import ASSETS, load_pipeline


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m hypernet.tiny", description="the built-in tiny SD model")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the tiny model from scratch on generated scenes (CPU, ~25 min)")
    b.add_argument("--out", default=None, help=f"output folder (default: the shipped one, {ASSETS})")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's step count (0.01: a smoke test)")
    b.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap; stages stop early when it runs out (the result then depends on timing)")
    b.add_argument("--no-samples", action="store_true", help="skip the accuracy check and samples.png")
    s = sub.add_parser("sample", help="draw images with the tiny model")
    s.add_argument("prompt", nargs="+")
    s.add_argument("--out", default="tiny.png", help="PNG path (several prompts/images: one row each, side by side)")
    s.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-n", "--images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--cfg", type=float, default=5.0)
    s.add_argument("--scale", type=int, default=4, help="upscale factor of the saved PNG (nearest neighbour)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.out, seed=args.seed, scale=args.scale, minutes=args.minutes, samples=not args.no_samples)
        return 0
    from PIL import Image
    pipe = load_pipeline(args.model)
    rows = [sample(pipe, [p] * args.images, [args.seed + i for i in range(args.images)], args.steps, args.cfg)
            for p in args.prompt]
    out = Image.new("RGB", (64 * args.images, 64 * len(rows)))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out.paste(img, (64 * c, 64 * r))
    out = out.resize((out.width * args.scale, out.height * args.scale), Image.Resampling.NEAREST)
    out.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
