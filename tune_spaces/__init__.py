"""Tune sweep definitions: one YAML per sweep (see DESIGN.md, "Tuning")."""

from pathlib import Path

SPACES_DIR = Path(__file__).resolve().parent


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
