//! Training: EDM objective, data, degradations.

pub mod data;
pub mod degrade;
pub mod trainer;
