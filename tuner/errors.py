"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (flag, study file, search space, storage URL, dataset path) with how to fix it."""
