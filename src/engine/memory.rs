//! Memory estimates that pick the block batch size for a budget.
