"""Every HTML page Whetstone writes (evaluation report, data card, demo report, the review
log-in form) is a Jinja2 template under `templates/`, rendered here with autoescape on: record
text (inputs, outputs, references) may hold markup, and a page must show it as text. Markdown
templates (`*.md`: an exported adapter's model card) are rendered without HTML escaping."""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

import jinja2


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("whetstone", "templates"),
        autoescape=jinja2.select_autoescape(disabled_extensions=("md",), default=True),
        # A name the template uses but the page did not pass is a bug, not an empty string.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """The page `template` (a file under templates/) filled in with `context`."""
    return _environment().get_template(template).render(**context)


def png_data_uri(png: bytes) -> str:
    """An image a self-contained page embeds (no file beside it needs to travel with it)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()
