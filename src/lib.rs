//! snapferry.
pub mod cloud;
pub mod ids;
pub mod plan;
