"""Container images the components run in.

Components name an image per dependency family. The defaults are the images
our release builds push; a build (Cloud Build, `make compile`) overrides them
at compile time with ``CAUCE_IMAGE_<FAMILY>`` (for example with an
``...@sha256:`` digest, so Vertex caching keys on the exact image).

Locally, kfp.local runs the component body in the current virtualenv and never
pulls the image, so the name only matters for specs submitted to Vertex.
"""

from __future__ import annotations

import os

from cauce import __version__

REGISTRY = os.environ.get("CAUCE_IMAGE_REGISTRY", "ghcr.io/cauce-ml")

FAMILIES = ("base", "beam", "tf", "torch", "serving")


def image_for(family: str) -> str:
    """Return the image for ``family`` (base, beam, tf, torch, serving)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown image family {family!r}; expected one of {FAMILIES}")
    override = os.environ.get(f"CAUCE_IMAGE_{family.upper()}")
    if override:
        return override
    return f"{REGISTRY}/cauce-{family}:{__version__}"


BASE_IMAGE = image_for("base")
BEAM_IMAGE = image_for("beam")
TF_IMAGE = image_for("tf")
SERVING_IMAGE = image_for("serving")
