"""Human review: which results people see (:mod:`.strata`), the queue they work from
(:mod:`.queue`, in the embedding store's database, tables in :mod:`.schema`), and the export
that ``eval`` and ``calibrate`` learn from. No HTTP here; the service's review routes call it."""

from .queue import ACTIONS, DEFAULT_LEASE, Decision, ReviewError, ReviewItem, ReviewQueue
from .strata import DEFAULT_AUDIT_RATE, Selection, choose, default_bands

__all__ = ["ACTIONS", "DEFAULT_AUDIT_RATE", "DEFAULT_LEASE", "Decision", "ReviewError", "ReviewItem", "ReviewQueue",
           "Selection", "choose", "default_bands"]
