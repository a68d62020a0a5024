//! Training: EDM objective, data, degradations.
