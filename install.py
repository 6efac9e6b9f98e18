"""Run by the AUTOMATIC1111 webui and Forge at launch, as a script (`python install.py`, so __name__ is "__main__"):
pip-installs only the packages hypernet needs that are missing. Never torch: the host chose that one."""
import importlib.util
import subprocess
import sys

REQUIRED = {"safetensors": "safetensors>=0.4", "numpy": "numpy", "PIL": "pillow", "tqdm": "tqdm"}


def missing() -> list:
    """pip requirement strings of the needed packages that cannot be imported here."""
    return [requirement for module, requirement in REQUIRED.items() if importlib.util.find_spec(module) is None]


def install(requirement: str) -> None:
    """Through the launcher's run_pip when it is importable (it uses the host's pip settings), else plain pip."""
    try:
        import launch  # the host's launcher module, on PYTHONPATH when it runs extension installers
        run_pip = launch.run_pip
    except (ImportError, AttributeError):
        subprocess.run([sys.executable, "-m", "pip", "install", requirement], check=True)
        return
    run_pip(f'install "{requirement}"', f"{requirement} for hypernet")


def main() -> None:
    for requirement in missing():
        install(requirement)


if __name__ == "__main__":
    main()
