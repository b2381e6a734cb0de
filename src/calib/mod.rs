//! Calibration: text -> token windows, observers (statistics), and the block-by-block runner.
pub mod dataset;
pub mod hessian;
pub mod histogram;
pub mod observers;
pub mod stats_file;
