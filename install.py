"""Run by the webui at launch: install only the packages hypernet needs that are missing (never torch)."""
import importlib.util

REQUIRED = {"safetensors": "safetensors", "numpy": "numpy", "PIL": "pillow", "tqdm": "tqdm"}


def _missing():
    return [pip_name for module, pip_name in REQUIRED.items() if importlib.util.find_spec(module) is None]


if __name__ != "__main__":
    missing = _missing()
    if missing:
        import launch  # the webui's own launcher module; only present inside the webui
        for package in missing:
            launch.run_pip(f"install {package}", f"{package} for hypernet")
