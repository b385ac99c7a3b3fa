"""OccamToken: register-anchored, budget-adaptive visual-token pruning for VLMs."""
