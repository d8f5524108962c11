"""The HTML reports of validate, evaluate and monitor: one Jinja2 environment, one stylesheet,
one template per report (``templates/``).

The Vertex AI and Kubeflow consoles show an HTML artifact in a sandboxed frame without internet
access, so every page is self-contained: the stylesheet inlined, charts as inline SVG (macros in
``charts.html.j2``), no script. Every value a template prints is escaped (``html.escape`` with
quotes); only the templates' own markup is HTML.

A component builds its report's context from its own results and calls ``render``; what the
page shows and how it looks is in the templates.
"""

from __future__ import annotations

import html
from pathlib import Path

import jinja2
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"
REPORTS = ("validation", "evaluation", "drift")


def _escaped(value) -> Markup:
    """Every printed value, escaped as the reports always were (``"`` as ``&quot;``)."""
    if hasattr(value, "__html__"):  # the templates' own markup: macros, blocks
        return Markup(value)
    return Markup(html.escape(str(value), quote=True))


def _fmt(value, spec: str) -> str:
    """Python's format mini-language in a template: ``{{ share|fmt('.2%') }}``."""
    return format(value, spec)


def _metric(value: float | None, digits: int = 4) -> str:
    """A metric: ``–`` when absent, a count with thousands separators, otherwise fixed decimals."""
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        finalize=_escaped,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(fmt=_fmt, metric=_metric)
    environment.globals.update(zip=zip)
    return environment


_ENVIRONMENT = _environment()


def render(name: str, /, **context) -> str:
    """The page of report ``name`` (one of ``REPORTS``) for ``context``, the names its template reads."""
    if name not in REPORTS:
        raise ValueError(f"unknown report {name!r}; reports: {', '.join(REPORTS)}")
    return _ENVIRONMENT.get_template(f"{name}.html.j2").render(**context)
