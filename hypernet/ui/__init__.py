"""What the webui's tabs and the standalone UI share: tab builders, actions, jobs, state and settings, for any host.

Nothing in this package imports the webui's `modules`, not even lazily; the webui's side (webui/) subclasses or
registers what differs there (HypernetState, WebuiRuntime, a settings reader).
    state.py     LibraryState: the folder's library, the current attachment, cached facts and hashes, the jobs;
                 hooks a host overrides (folder, loaded model, UNet, refresh, hash source, data folder)
    settings.py  the table of settings with their defaults, and value(key) through a host's registered reader
    metadata.py  a file's metadata without loading its weights
    cards.py     what a card / API entry says about a file
    jobs.py      a training job in a thread (TrainJob, JobStatus), run through a runtime; LocalRuntime for no webui
    actions.py   create a file / start a job from loosely typed fields (API, tabs, standalone UI)
    widgets.py   the Panel the tabs act on, one component per option field, field values back, message HTML
    tabs.py      the Create and Train tabs, built from the option dataclasses (gradio 3.41 and 4)
    compare_panel.py  the Train tab's panel that compares a run's saved copies
"""
