"""Custom wake phrases (`earshot encoder`, `earshot keywords add`): the entry module (track.py)."""
