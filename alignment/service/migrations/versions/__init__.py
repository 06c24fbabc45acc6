"""Versioned schema revisions, oldest first; never edit a released one, add a new revision."""
