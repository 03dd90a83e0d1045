"""edgefit: per-request, budget-aware selection of compact image classifiers."""
