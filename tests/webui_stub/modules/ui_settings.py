"""modules/ui_settings.py (v1.10.1, create_setting_component, lines 22-40): how the Settings page turns an option
into a gradio component. An option without a component gets one from the type of its default: str, int or bool; any
other type (a float, say) stops the whole webui from starting."""


def component_for(info):
    """The gradio component class the Settings page builds for an OptionInfo."""
    import gradio as gr
    if info.component is not None:
        return info.component
    kind = type(info.default)
    if kind == str:
        return gr.Textbox
    if kind == int:
        return gr.Number
    if kind == bool:
        return gr.Checkbox
    raise Exception(f"bad options item type: {kind} for key {info.label}")


def create_setting_component(key):
    """Build the component for option `key`, as the Settings page does (inside a gr.Blocks)."""
    from modules.shared import opts
    info = opts.data_labels[key]
    args = info.component_args() if callable(info.component_args) else info.component_args
    return component_for(info)(label=info.label, value=opts.data_labels[key].default, elem_id=f"setting_{key}",
                               **(args or {}))
