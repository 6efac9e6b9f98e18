"""Everything that touches the webui's `modules` lives here and is imported only inside the webui."""
import logging

log = logging.getLogger("hypernet")


def register() -> None:
    """Register the extension's callbacks with the running webui."""
    log.info("hypernet: library loaded; the webui integration (tags, cards, tabs) arrives in a later release")
