"""How the API answers when something fails: always JSON with a `detail` sentence."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Register the API's exception handlers on `app`."""
