"""The file format: reading and writing hypernetwork files, safely.

    files.py      .pt (the webui's layout) and .safetensors, the .optim sidecar, atomic writes, the webui loader check
    container.py  the zip / pickle / safetensors reader that never runs code from a file
    compat.py     which loaders (the webui, Forge, ComfyUI, NovelAI) read a file, and why not
"""
