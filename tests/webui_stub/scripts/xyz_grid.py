"""scripts/xyz_grid.py of the webui v1.10.1, the parts an extension's axis meets: AxisOption(label, type, apply,
format_value, confirm, cost, choices, prepare), the module-level `axis_options` list, and Script.run's treatment of
an axis (xyz_grid.py:538-640): values from the dropdown when the option has choices (else split as CSV), converted
with opt.type, confirm(p, values) once before any image, then per cell a copy of p, apply(pc, x, xs) for each axis
in x, y, z order, and process_images(pc); cell labels come from format_value(p, opt, x)."""
import copy
import csv
from io import StringIO
from itertools import chain

from modules import processing, scripts


def format_value_add_label(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return x


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, lambda p, x, xs: setattr(p, "seed", x)),
]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def run(self, p, x_label, x_values, y_label="Nothing", y_values="", x_dropdown=None, y_dropdown=None,
            sample=processing.sample_latents):
        """(cells as {(x_index, y_index): (Processed, prompt)}, x labels, y labels)."""
        options = {o.label: o for o in axis_options}

        def process_axis(opt, vals, dropdown):
            if opt.label == "Nothing":
                return [0]
            values = dropdown if opt.choices is not None and dropdown is not None else csv_string_to_list_strip(vals)
            values = [opt.type(v) for v in values]
            if opt.confirm:
                opt.confirm(p, values)
            return values

        x_opt, y_opt = options[x_label], options[y_label]
        xs, ys = process_axis(x_opt, x_values, x_dropdown), process_axis(y_opt, y_values, y_dropdown)
        cells = {}
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                pc = copy.copy(p)
                pc.extra_generation_params = dict(p.extra_generation_params)
                pc.comments = {}
                x_opt.apply(pc, x, xs)
                y_opt.apply(pc, y, ys)
                cells[(ix, iy)] = (processing.process_images(pc, sample), pc.prompt)
        return cells, [x_opt.format_value(p, x_opt, x) for x in xs], [y_opt.format_value(p, y_opt, y) for y in ys]
