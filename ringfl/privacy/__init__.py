"""Differential privacy for selective uploads: NumericSparse and the per-peer ε ledger.

Import the mechanism from its module (``from ringfl.privacy.numeric_sparse import
numeric_sparse``): it is not re-exported here, so ``ringfl.privacy.numeric_sparse`` stays the module.
"""

from ringfl.privacy.ledger import BudgetExhausted, PrivacyLedger, advanced_composition

__all__ = ["BudgetExhausted", "PrivacyLedger", "advanced_composition"]
