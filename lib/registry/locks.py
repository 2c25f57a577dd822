"""Promotions of one model are serialised by a lock of the state database; other models' go on.

Team: a PostgreSQL session advisory lock, so drivers on different hosts queue; it is released
when the holder's connection ends, so a killed promotion never leaves the model locked.
Local: a `flock` on a file beside history.sqlite (one host by definition).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from lstmpipe.lib.state.database import Database


def promotion_lock(db: Database, model_name: str) -> AbstractContextManager[None]:
    """Held while a promotion or rollback of `model_name` reads the champion and moves it."""
    return db.exclusive(f"promote:{model_name}")
