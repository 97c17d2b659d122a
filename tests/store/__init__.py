"""Tests; a package so that helpers import by their full name (tests.<area>.<helper>)."""
