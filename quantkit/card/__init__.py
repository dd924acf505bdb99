"""Model cards: the README.md of every artifact folder, written from its quantkit.json."""
from quantkit.card.metadata import card_data, source_metadata
from quantkit.card.render import display_name, is_generated, render, write_card

__all__ = ["card_data", "display_name", "is_generated", "render", "source_metadata", "write_card"]
