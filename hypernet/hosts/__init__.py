"""Adapters between the trainer and one concrete model stack.

    protocol.py        the contract: Host (what every host has) and the optional members the trainer looks up;
                       mypy checks every host and the tests' stand-ins against it (tests/typing_hosts.py)
    diffusers.py       DiffusersHost, and load_pipeline for a diffusers folder or a single checkpoint file
    single_file.py     .safetensors / .ckpt checkpoints as diffusers pipelines, offline
    clip_tokenizer.py  CLIP's byte vocabulary and tokenizer, built offline
    vae.py             a separate VAE file or folder
    webui.py           WebuiHost and ForgeHost on the webui's loaded model (imports `modules` lazily)
"""
