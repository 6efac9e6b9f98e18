"""The programs built on the library.

    cli.py         python -m hypernet: create, info, convert, check, train, compare, demo, ui
    standalone.py  python -m hypernet ui: the shared tabs plus Generate and cards on a diffusers pipeline
    models.py      a model path as a pipeline: the tiny model's folder, a diffusers folder or a single file
"""
