//! The plan: YAML text -> raw structs -> a validated [`Plan`] of newtypes.
pub mod model;
pub use model::*;
