"""Training a hypernetwork on a frozen UNet, for any host (hosts/), and the tools around a run.

    trainer.py        Trainer: setup and the step loop; train() runs one
    objective.py      the pure math: noise, timesteps, noisy latents, targets, the loss
    run_folder.py     the run folder: settings, loss CSV, TensorBoard / W&B, loss plot, numbered copies, rescue
    previews.py       preview images during a run
    update.py         the checked optimizer step: gradients summed over processes, the NaN guard, clipping
    optimizers.py     the optimizers by name, and the saved optimizer state a resume continues
    precision.py      autocast, the UNet's compute dtype, float16 loss scaling
    text_cache.py     the prompts' text conditioning, encoded once
    staging.py        the next batch read and copied to the device during a step
    host_changes.py   what a run changes on the host, and putting it back
    results.py        Progress after every step, TrainResult at the end
    data.py           the dataset: images, captions, templates, sizes, buckets, the latent cache, batches
    schedule.py       "rate:step" schedules (learning rate, clip value)
    validation.py     the fixed validation draws
    probe.py          prompt kept and style strength per copy, and the suggested copy
    timing.py         where a run's time goes
    distributed.py    data-parallel processes: shards, the all-reduce, one writer
    sample_prompts.py preview prompt files in kohya's format
    config_file.py    run files (TOML / JSON) for train --config and --dump-config
    compare.py        picking the right copy: a grid of copies on fixed prompts
    plot.py           loss plots and PNG writing
"""
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
